"""Event-camera data: AEDAT readers, integration into frames, and the DVS128 Gesture / CIFAR10-DVS data sets.

Formats (iniVation's AEDAT documentation and libcaer headers):

* **AEDAT 3.1** (DVS128 Gesture): ``#`` header lines up to ``#!END-HEADER\\r\\n``, then event packets. A
  packet is a 28-byte little-endian header (int16 type, int16 source, int32 event size, int32 timestamp
  offset, int32 timestamp overflow, int32 capacity, int32 number, int32 valid) followed by
  ``capacity * size`` bytes of events. A polarity event (type 1) is 8 bytes: uint32 data (bit 0 valid mark,
  bit 1 polarity, bits 2-16 y, bits 17-31 x; (0, 0) at the top left) and int32 timestamp in us, to which
  ``overflow << 31`` is added. Other packet types are skipped.
* **AEDAT 2.0** (CIFAR10-DVS, jAER's DVS128 class): ``#`` header lines, then big-endian 8-byte events
  (uint32 address, uint32 timestamp in us). Address bit 0 polarity, bits 1-7 x, bits 8-14 y ((0, 0) at the
  bottom left), bit 15 an external (non-pixel) event.

Like the reference readers (iniVation's ``dv.LegacyAedatFile``, SpikingJelly, whose frames Spikformer
trained on), both readers keep every event by default; ``valid_only=True`` / ``pixel_only=True`` drop the
events whose valid mark is clear (3.1) or that are external events (2.0).

Frames follow SpikingJelly's "number" split: N events in file order, frame ``j`` takes events
``[j * (N // T), (j + 1) * (N // T))`` and the last frame also takes the remainder; each frame holds
per-polarity event counts ``[T, 2, H, W]`` (channel 0 = polarity 0 (OFF), channel 1 = polarity 1 (ON)).
"""

from __future__ import annotations

import csv
import hashlib
import math
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..utils import atomic_write, cache_dir

DVS128_SIZE = (128, 128)  # (H, W) of the DVS128 sensor used by both data sets
GESTURE_CLASSES = ("hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
                   "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise",
                   "arm_roll", "air_drums", "air_guitar", "other_gestures")
CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                       "truck")
_PACKET_HEADER = struct.Struct("<hhiiiiii")
_POLARITY_EVENT = 1
_CACHE_VERSION = 2  # bump when the frame layout or the checks change, so that old cache files are not reused
_DVS128_CHIPS = (b"dvs128", b"tmpdiff128")  # jAER's class names of the DVS128 sensor (AEDAT 2.0 "# AEChip:")


class Events(NamedTuple):
    """Decoded events, all ``[N]`` int64 arrays: timestamp (us), x (column), y (row), polarity (0/1)."""

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray

    def select(self, mask: np.ndarray) -> Events:
        return Events(*(a[mask] for a in self))


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"event file not found: {path}")
    return path.read_bytes()


def _skip_header(data: bytes, path: Path, version: bytes) -> int:
    """Return the offset of the first byte after the ``#`` header lines of an AEDAT ``version`` file.

    A first line ``#!AER-DATx.y`` must name ``version``. AEDAT 3.1 requires that line and a closing
    ``#!END-HEADER`` line; in AEDAT 2.0 the header ends at the first line that does not start with ``#``.
    """
    pos, n_lines = 0, 0
    while data[pos:pos + 1] == b"#":
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise ValueError(f"event file {path} is truncated inside its header (line {n_lines + 1})")
        line = data[pos:nl + 1]
        pos, n_lines = nl + 1, n_lines + 1
        if n_lines == 1 and line.startswith(b"#!AER-DAT"):
            found = line.strip()[len(b"#!AER-DAT"):]
            if found != version:
                raise ValueError(f"event file {path} is AEDAT {found.decode(errors='replace')}, "
                                 f"expected AEDAT {version.decode()}")
        elif n_lines == 1 and version == b"3.1":
            break
        if version == b"3.1" and line == b"#!END-HEADER\r\n":
            return pos
    if version == b"3.1":
        raise ValueError(f"event file {path}: no '#!AER-DAT3.1' ... '#!END-HEADER' header (truncated, or "
                         f"not an AEDAT 3.1 file)")
    return pos


def read_aedat31(path: str | Path, valid_only: bool = False) -> Events:
    """Polarity events of an AEDAT 3.1 file (DVS128 Gesture recordings), in file order; with
    ``valid_only`` only those whose valid mark (bit 0) is set."""
    path = Path(path)
    data = _read(path)
    pos = _skip_header(data, path, b"3.1")
    words, overflows = [], []
    while pos < len(data):
        if len(data) - pos < _PACKET_HEADER.size:
            raise ValueError(f"event file {path} is truncated: {len(data) - pos} bytes at offset {pos}, "
                             f"a packet header needs {_PACKET_HEADER.size}")
        etype, _source, esize, _ts_offset, overflow, capacity, _number, _valid = _PACKET_HEADER.unpack_from(
            data, pos)
        pos += _PACKET_HEADER.size
        if esize <= 0 or capacity < 0:
            raise ValueError(f"event file {path}: corrupt packet header at offset {pos - _PACKET_HEADER.size} "
                             f"(event size {esize}, capacity {capacity})")
        payload = capacity * esize
        if len(data) - pos < payload:
            raise ValueError(f"event file {path} is truncated: packet at offset {pos - _PACKET_HEADER.size} "
                             f"needs {payload} bytes of events, {len(data) - pos} remain")
        if etype == _POLARITY_EVENT:
            if esize != 8:
                raise ValueError(f"event file {path}: polarity packet with {esize}-byte events (expected 8)")
            words.append(np.frombuffer(data, dtype="<u4", count=2 * capacity, offset=pos))
            overflows.append(np.full(capacity, overflow, dtype=np.int64))
        pos += payload
    if not words:
        return Events(*(np.zeros(0, np.int64) for _ in range(4)))
    raw = np.concatenate(words).astype(np.int64)
    info, stamp = raw[0::2], raw[1::2]
    t = stamp | (np.concatenate(overflows) << 31)
    events = Events(t, (info >> 17) & 0x7FFF, (info >> 2) & 0x7FFF, (info >> 1) & 1)
    return events.select((info & 1).astype(bool)) if valid_only else events


def _check_chip(header: bytes, path: Path) -> None:
    """Refuse an AEDAT 2.0 file whose ``# AEChip:`` header line names another sensor than the DVS128: its
    addresses have another layout (a DAVIS240C's decode to x = 0 everywhere)."""
    for line in header.splitlines():
        key, _, chip = line.lstrip(b"# ").partition(b":")
        if key.strip().lower() == b"aechip":
            if not any(name in chip.lower() for name in _DVS128_CHIPS):
                raise ValueError(f"event file {path} was recorded with {chip.strip().decode(errors='replace')}, "
                                 "not a DVS128: its addresses have another layout (this reader decodes jAER's "
                                 "DVS128 format, as in CIFAR10-DVS)")
            return


def read_aedat20_dvs128(path: str | Path, pixel_only: bool = False) -> Events:
    """Events of an AEDAT 2.0 file written by jAER's DVS128 class (CIFAR10-DVS), in file order; with
    ``pixel_only`` without the external events (address bit 15).

    Coordinates are the sensor's own: (0, 0) at the bottom left. A file without events (empty, or a header
    alone) and one whose ``# AEChip:`` header line names another sensor are refused.
    """
    path = Path(path)
    data = _read(path)
    pos = _skip_header(data, path, b"2.0")
    _check_chip(data[:pos], path)
    body = len(data) - pos
    if body % 8:
        raise ValueError(f"event file {path} is truncated: {body} bytes of events is not a multiple of 8")
    if body == 0:
        raise ValueError(f"event file {path} holds no events ({'empty' if pos == 0 else 'a header alone'}); "
                         "a CIFAR10-DVS recording has tens of thousands")
    raw = np.frombuffer(data, dtype=">u4", offset=pos).astype(np.int64)
    address, t = raw[0::2], raw[1::2]
    events = Events(t, (address >> 1) & 0x7F, (address >> 8) & 0x7F, address & 1)
    return events.select(((address >> 15) & 1) == 0) if pixel_only else events


def events_to_frames(events: Events, frames: int, size: tuple[int, int] = DVS128_SIZE,
                     source: str | Path = "events") -> np.ndarray:
    """Integrate ``events`` into ``[frames, 2, H, W]`` int32 per-polarity counts, split by event number.

    With fewer events than frames, every event lands in the last frame (as in SpikingJelly).
    ``source`` names the file in errors.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    h, w = size
    n = len(events.t)
    if n and (events.x.max() >= w or events.y.max() >= h or events.x.min() < 0 or events.y.min() < 0):
        raise ValueError(f"{source}: event coordinates up to x={events.x.max()}, y={events.y.max()} do not fit "
                         f"a {h}x{w} sensor")
    per_frame = n // frames
    index = np.arange(n)
    frame = np.minimum(index // per_frame, frames - 1) if per_frame else np.full(n, frames - 1)
    flat = ((frame * 2 + events.p) * h + events.y) * w + events.x
    counts = np.bincount(flat, minlength=frames * 2 * h * w)
    return counts.reshape(frames, 2, h, w).astype(np.int32)


def read_gesture_labels(path: str | Path) -> np.ndarray:
    """``*_labels.csv`` of DVS128 Gesture: ``[K, 3]`` int64 rows ``(class 1..11, start_us, end_us)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DVS128 Gesture labels file not found: {path}")
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and not row[0].strip().isdigit()):  # header: class,startTime_usec,endTime_usec
                continue
            try:
                label, start, end = (int(v) for v in row)
            except ValueError:
                raise ValueError(f"{path}, line {i + 1}: expected 'class,startTime_usec,endTime_usec' integers, "
                                 f"got {row}") from None
            if not 1 <= label <= len(GESTURE_CLASSES) or end < start:
                raise ValueError(f"{path}, line {i + 1}: class {label} (1..11) from {start} to {end} us is invalid")
            rows.append((label, start, end))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


class FrameCache:
    """Integrated frames stored as compressed ``.npz`` files, keyed by the source file and the settings.

    The key hashes the source's absolute path, size and modification time with ``tag``, which holds every
    other input of the frames (their number, the sample's row and time window from the labels file, the
    orientation), so an edited or replaced file or label is read again. Files are written atomically.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else cache_dir("frames")

    def path(self, source: Path, tag: str) -> Path:
        stat = source.stat()
        key = f"{_CACHE_VERSION}|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{tag}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self.directory / f"{source.stem}-{tag}-{digest}.npz"

    def load(self, path: Path) -> np.ndarray | None:
        """The cached frames, or None when absent or unreadable (then they are computed again)."""
        try:
            with np.load(path) as f:
                return f["frames"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None

    def save(self, path: Path, frames: np.ndarray) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: given a name, numpy would append ".npz" to it
                np.savez_compressed(f, frames=frames)

        atomic_write(path, write)


class _FrameDataset(Dataset):
    """Shared item access: ``(frames [T, 2, H, W] float32 counts, label)``, optionally transformed."""

    classes: tuple[str, ...]

    def __init__(self, frames: int, cache_dir: str | Path | None, transform: Callable | None):
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.frames = frames
        self.cache = FrameCache(cache_dir)
        self.transform = transform
        self.targets: list[int] = []

    def __len__(self) -> int:
        return len(self.targets)

    def _frames(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int):
        x = torch.from_numpy(self._frames(index).astype(np.float32))
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[index]


def _data_folder(root: str | Path, name: str, marker: str) -> Path:
    root = Path(root)
    for folder in (root, root / name):
        if (folder / marker).exists():
            return folder
    raise FileNotFoundError(f"{name}: neither {root / marker} nor {root / name / marker} exists (extract the "
                            f"archive there, or pass the folder that holds {marker} as root)")


class DVSGesture(_FrameDataset):
    """DVS128 Gesture (IBM): 11 classes, one sample per row of each recording's ``*_labels.csv``.

    ``root`` is the extracted ``DvsGesture`` folder (or its parent): ``trials_to_train.txt`` /
    ``trials_to_test.txt`` list the recordings (``userXX_<lighting>.aedat``); each has a
    ``userXX_<lighting>_labels.csv``. A sample is the events with ``start <= t < end`` integrated into
    ``frames`` frames; label = class - 1. The first access to a recording decodes it once and caches the
    frames of all its samples.
    """

    classes = GESTURE_CLASSES

    def __init__(self, root: str | Path, split: str = "train", frames: int = 16,
                 cache_dir: str | Path | None = None, transform: Callable | None = None):
        super().__init__(frames, cache_dir, transform)
        if split not in ("train", "test"):
            raise ValueError(f"DVS128 Gesture split must be 'train' or 'test', got {split!r}")
        self.root = _data_folder(root, "DvsGesture", f"trials_to_{split}.txt")
        trials = self.root / f"trials_to_{split}.txt"
        self.samples: list[tuple[Path, int, int, int]] = []  # (recording, row, start_us, end_us)
        for name in trials.read_text().split():
            recording = self.root / name
            if not recording.is_file():
                raise FileNotFoundError(f"DVS128 Gesture: {recording} (listed in {trials}) not found")
            labels = read_gesture_labels(self.root / f"{recording.stem}_labels.csv")
            for row, (label, start, end) in enumerate(labels.tolist()):
                self.samples.append((recording, row, start, end))
                self.targets.append(label - 1)

    def _tag(self, index: int) -> str:
        """The cache tag of sample ``index``: its row and time window (the labels file's content) and T."""
        _, row, start, end = self.samples[index]
        return f"{row}-{start}-{end}-T{self.frames}"

    def _frames(self, index: int) -> np.ndarray:
        recording = self.samples[index][0]
        cached = self.cache.load(self.cache.path(recording, self._tag(index)))
        if cached is not None:
            return cached
        events = read_aedat31(recording)
        result = None
        for other, (rec, r, start, end) in enumerate(self.samples):
            if rec != recording:
                continue
            sample = events.select((events.t >= start) & (events.t < end))
            frames = events_to_frames(sample, self.frames, DVS128_SIZE, f"{recording} (row {r})")
            self.cache.save(self.cache.path(recording, self._tag(other)), frames)
            if other == index:
                result = frames
        return result


class CIFAR10DVS(_FrameDataset):
    """CIFAR10-DVS: 10 class folders (``airplane/`` ... ``truck/``) of AEDAT 2.0 recordings.

    The data set has no official split. Like SpikingJelly's ``split_to_train_test_set(0.9, ...)`` (used by
    Spikformer), files are sorted by name within each class and the first ``ceil(train_fraction * n)`` are
    ``"train"``, the rest ``"test"``; ``"all"`` keeps every file. ``orientation="spikingjelly"`` maps the
    sensor's events as SpikingJelly does (x' = 127 - y, y' = 127 - x, p' = 1 - p), so frames match those
    Spikformer trained on; ``"sensor"`` keeps jAER's coordinates.
    """

    classes = CIFAR10_DVS_CLASSES

    def __init__(self, root: str | Path, split: str = "train", frames: int = 16, train_fraction: float = 0.9,
                 orientation: str = "spikingjelly", cache_dir: str | Path | None = None,
                 transform: Callable | None = None):
        super().__init__(frames, cache_dir, transform)
        if split not in ("train", "test", "all"):
            raise ValueError(f"CIFAR10-DVS split must be 'train', 'test' or 'all', got {split!r}")
        if orientation not in ("spikingjelly", "sensor"):
            raise ValueError(f"orientation must be 'spikingjelly' or 'sensor', got {orientation!r}")
        if not 0 < train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        self.orientation = orientation
        self.root = _data_folder(root, "CIFAR10-DVS", self.classes[0])
        self.files: list[Path] = []
        for label, name in enumerate(self.classes):
            folder = self.root / name
            if not folder.is_dir():
                raise FileNotFoundError(f"CIFAR10-DVS: class folder {folder} not found")
            files = sorted(folder.glob("*.aedat"), key=lambda p: p.name)
            if not files:
                raise FileNotFoundError(f"CIFAR10-DVS: no .aedat files in {folder}")
            cut = math.ceil(len(files) * train_fraction)
            chosen = {"train": files[:cut], "test": files[cut:], "all": files}[split]
            self.files += chosen
            self.targets += [label] * len(chosen)

    def _frames(self, index: int) -> np.ndarray:
        source = self.files[index]
        path = self.cache.path(source, f"T{self.frames}-{self.orientation}")
        cached = self.cache.load(path)
        if cached is not None:
            return cached
        events = read_aedat20_dvs128(source)
        if self.orientation == "spikingjelly":
            h, w = DVS128_SIZE
            events = Events(events.t, (w - 1) - events.y, (h - 1) - events.x, 1 - events.p)
        frames = events_to_frames(events, self.frames, DVS128_SIZE, source)
        self.cache.save(path, frames)
        return frames
