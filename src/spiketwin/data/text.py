"""Text classification data: GLUE-style TSV files (SST-2), tokenizers, padded batches of token ids.

- :func:`read_tsv` / :func:`load_sst2`: sentences and labels from a TSV whose header names a text column
  (``text`` or ``sentence``) and a ``label`` column; errors name the file and line.
- :func:`load_tokenizer`: a Hugging Face tokenizer from a local directory (never downloads);
  :func:`train_tokenizer`: a small WordPiece tokenizer trained on your sentences, with RoBERTa's special
  tokens at RoBERTa's ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3).
- :func:`encode`: sentences -> ``{"input_ids", "attention_mask"}`` ``[N, L]`` (padded on the right).
- :class:`TextData`: encoded sentences and their labels in memory, the ``sst2`` data set of
  :func:`spiketwin.data.get_dataset` (:func:`sst2`: GLUE's TSV files and your tokenizer).

Needs ``transformers`` and ``tokenizers`` for the tokenizers (``pip install 'spiketwin[nlp]'``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from torch.utils.data import Dataset

from ..extras import require

TEXT_COLUMNS = ("text", "sentence")
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


def read_tsv(path: str | Path) -> tuple[list[str], torch.Tensor]:
    """Sentences and int64 labels ``[N]`` from a TSV with a header naming ``text`` (or ``sentence``) and ``label``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_tsv: no such file {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file (expected a header 'text<TAB>label')")
    header = lines[0].split("\t")
    text_col = next((header.index(c) for c in TEXT_COLUMNS if c in header), None)
    if text_col is None or "label" not in header:
        raise ValueError(f"{path}:1: header {header} must name a text column ({' or '.join(TEXT_COLUMNS)}) "
                         "and a 'label' column, separated by tabs")
    label_col = header.index("label")
    texts, labels = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            raise ValueError(f"{path}:{number}: expected {len(header)} tab-separated fields, got {len(cells)}")
        try:
            label = int(cells[label_col])
        except ValueError:
            raise ValueError(f"{path}:{number}: label {cells[label_col]!r} is not an integer") from None
        if label < 0:
            raise ValueError(f"{path}:{number}: label {label} is negative (class labels are 0, 1, ...)")
        texts.append(cells[text_col].strip())
        labels.append(label)
    if not texts:
        raise ValueError(f"{path}: no rows after the header")
    return texts, torch.tensor(labels, dtype=torch.int64)


def load_sst2(root: str | Path, split: str = "train") -> tuple[list[str], torch.Tensor]:
    """SST-2 ``split`` (``"train"`` or ``"dev"``) from ``root/{split}.tsv`` (GLUE's files)."""
    if split not in ("train", "dev"):
        raise ValueError(f"load_sst2: split must be 'train' or 'dev', got {split!r}")
    path = Path(root) / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"load_sst2: {path} not found (expected GLUE's SST-2 train.tsv / dev.tsv in {root})")
    return read_tsv(path)


def _require_nlp(what: str):
    require("tokenizers", "nlp", what)
    return require("transformers", "nlp", what)


def load_tokenizer(path: str | Path):
    """A Hugging Face tokenizer from a local directory (``AutoTokenizer``, ``local_files_only``)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"load_tokenizer: {path} is not a directory (expected one written by "
                                "save_pretrained, e.g. with tokenizer.json)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"load_tokenizer: {path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                                "save the tokenizer there with tokenizer.save_pretrained, or name its directory")
    transformers = _require_nlp("load_tokenizer")
    return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def train_tokenizer(texts: list[str], vocab_size: int = 8192, min_frequency: int = 2):
    """A lower-casing WordPiece tokenizer trained on ``texts`` that wraps each sentence as ``<s> ... </s>``.

    Returns a ``transformers.PreTrainedTokenizerFast`` (``save_pretrained`` / :func:`load_tokenizer` round-trip).
    """
    transformers = _require_nlp("train_tokenizer")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if not texts:
        raise ValueError("train_tokenizer: no sentences to train on")
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIAL_TOKENS))
    tok.train_from_iterator(texts, trainer=trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", bos),
                                                                                                 ("</s>", eos)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>", padding_side="right")


def encode(tokenizer, texts: list[str], max_length: int = 64) -> dict[str, torch.Tensor]:
    """Tokenize ``texts`` (truncated to ``max_length`` tokens, padded on the right to the longest):
    ``{"input_ids": [N, L], "attention_mask": [N, L]}``, int64, ``L <= max_length``."""
    if tokenizer.pad_token_id is None:
        raise ValueError("encode: the tokenizer has no pad token (set tokenizer.pad_token)")
    out = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length,
                    return_tensors="pt", return_token_type_ids=False)
    return {"input_ids": out["input_ids"].long(), "attention_mask": out["attention_mask"].long()}



class TextData(Dataset):
    """Encoded sentences in memory: ``tensors`` = ``({"input_ids", "attention_mask"}`` ``[N, L]``, labels ``[N]``)``
    (what :func:`spiketwin.train.fit` takes), ``classes`` the label names; items are ``(inputs of one sentence,
    label)``."""

    def __init__(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, classes: list[str]) -> None:
        self.tensors = (dict(inputs), labels)
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.tensors[1])

    def __getitem__(self, i: int):
        return {k: v[i] for k, v in self.tensors[0].items()}, int(self.tensors[1][i])

    @property
    def targets(self) -> list[int]:
        return self.tensors[1].tolist()

    def subset(self, index) -> TextData:
        """The sentences ``index``, padded only to the longest of them."""
        inputs, labels = self.tensors
        index = torch.as_tensor(index, dtype=torch.long)
        length = max(int(inputs["attention_mask"][index].sum(1).max()), 1) if len(index) else 0
        return TextData({k: v[index, :length] for k, v in inputs.items()}, labels[index], self.classes)


def sst2(root: str | Path, split: str, tokenizer, max_length: int = 64) -> TextData:
    """SST-2 ``split`` (``"train"``, or ``"dev"`` = ``"test"``) from ``root`` encoded with ``tokenizer`` (a Hugging
    Face tokenizer, e.g. :func:`load_tokenizer` of the model's directory), at most ``max_length`` tokens."""
    if tokenizer is None:
        raise ValueError("get_dataset('sst2') needs tokenizer= (a Hugging Face tokenizer, e.g. "
                         "spiketwin.data.text.load_tokenizer(DIR)); on the command line: --hf DIR or --tokenizer DIR")
    texts, labels = load_sst2(root, "dev" if split == "test" else split)
    if int(labels.max()) > 1:
        raise ValueError(f"sst2 {root}: labels must be 0 (negative) or 1 (positive), got {int(labels.max())}")
    return TextData(encode(tokenizer, texts, max_length), labels, ["negative", "positive"])
