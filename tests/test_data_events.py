"""Event-camera data: AEDAT 3.1 / 2.0 files written here in the published formats read back exactly,
frames by event number, caching, and errors that name the file."""

import struct

import numpy as np
import pytest
import torch

from spiketwin.data import events as events_module
from spiketwin.data.events import (
    CIFAR10DVS,
    DVSGesture,
    Events,
    FrameCache,
    events_to_frames,
    read_aedat20_dvs128,
    read_aedat31,
    read_gesture_labels,
)


def random_events(rng, n, t0=0, span=1_000_000, size=128):
    t = np.sort(rng.integers(t0, t0 + span, n)).astype(np.int64)
    return Events(t, rng.integers(0, size, n), rng.integers(0, size, n), rng.integers(0, 2, n))


def write_aedat31(path, events, packet=50, invalid=(), extra_packets=True, overflow_at=None):
    """AEDAT 3.1: header lines, then little-endian packets (28-byte header + 8-byte polarity events).
    ``invalid``: indices written without the valid mark; ``extra_packets``: interleave a special-event packet
    (type 0) that the reader must skip; ``overflow_at``: from this index on, timestamps use the overflow field."""
    out = [b"#!AER-DAT3.1\r\n", b"#Format: RAW\r\n", b"#Source 1: DVS128\r\n",
           b"#Start-Time: 2017-01-01 00:00:00 (TZ+0000)\r\n", b"#!END-HEADER\r\n"]
    n = len(events.t)
    for start in range(0, n, packet):
        idx = np.arange(start, min(start + packet, n))
        t = events.t[idx]
        overflow = int(t[0] >> 31)
        assert np.all(t >> 31 == overflow), "a packet shares one overflow value"
        data = (events.x[idx] << 17) | (events.y[idx] << 2) | (events.p[idx] << 1) | 1
        data[np.isin(idx, invalid)] &= ~1
        body = np.stack([data, t & 0x7FFFFFFF], 1).astype("<u4").tobytes()
        out.append(struct.pack("<hhiiiiii", 1, 1, 8, 4, overflow, len(idx), len(idx), len(idx)) + body)
        if extra_packets:
            special = np.array([[7 << 1 | 1, 5]], dtype="<u4").tobytes()
            out.append(struct.pack("<hhiiiiii", 0, 1, 8, 4, overflow, 1, 1, 1) + special)
    path.write_bytes(b"".join(out))


def write_aedat20_dvs128(path, events, external=()):
    """AEDAT 2.0 as jAER's DVS128 class writes it: '#' header lines, big-endian (address, timestamp) pairs."""
    address = (events.y << 8) | (events.x << 1) | events.p
    address[list(external)] |= 1 << 15
    header = (b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
              b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
              b"# Timestamps tick is 1 us\r\n# AEChip: Tmpdiff128\r\n")
    path.write_bytes(header + np.stack([address, events.t], 1).astype(">u4").tobytes())


def naive_frames(events, T, h=128, w=128):
    """Reference: SpikingJelly's number split written as loops over frames and events."""
    n = len(events.t)
    frames = np.zeros((T, 2, h, w), np.int64)
    di = n // T
    for j in range(T):
        lo, hi = j * di, (j + 1) * di if j < T - 1 else n
        for i in range(lo, hi):
            frames[j, events.p[i], events.y[i], events.x[i]] += 1
    return frames


def test_aedat31_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    ev = random_events(rng, 333)
    ev.t[200:] += 3 << 31  # timestamps past 2^31 us go through the packet's overflow field
    write_aedat31(tmp_path / "rec.aedat", ev, invalid=[5, 77])
    for a, b in zip(read_aedat31(tmp_path / "rec.aedat"), ev):  # every event, as the reference readers do
        np.testing.assert_array_equal(a, b)
    keep = np.ones(333, bool)
    keep[[5, 77]] = False
    for a, b in zip(read_aedat31(tmp_path / "rec.aedat", valid_only=True), ev.select(keep)):
        np.testing.assert_array_equal(a, b)


def test_aedat20_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(1)
    ev = random_events(rng, 257)
    write_aedat20_dvs128(tmp_path / "c.aedat", ev, external=[3])
    for a, b in zip(read_aedat20_dvs128(tmp_path / "c.aedat"), ev):
        np.testing.assert_array_equal(a, b)
    keep = np.arange(257) != 3
    for a, b in zip(read_aedat20_dvs128(tmp_path / "c.aedat", pixel_only=True), ev.select(keep)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n,T", [(1000, 16), (37, 4), (3, 8), (0, 2), (16, 16)])
def test_frames_split_by_event_number(n, T):
    rng = np.random.default_rng(n)
    ev = random_events(rng, n, size=8)
    frames = events_to_frames(ev, T, (8, 8))
    assert frames.shape == (T, 2, 8, 8)
    np.testing.assert_array_equal(frames, naive_frames(ev, T, 8, 8))
    assert frames.sum() == n
    if n >= T:  # equal counts per frame, the last takes the remainder
        assert frames[:-1].sum((1, 2, 3)).tolist() == [n // T] * (T - 1)


def test_frames_reject_events_outside_the_sensor():
    ev = Events(np.arange(2), np.array([0, 200]), np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="rec.aedat: event coordinates up to x=200"):
        events_to_frames(ev, 2, (128, 128), "rec.aedat")


def make_gesture(root, rng):
    folder = root / "DvsGesture"
    folder.mkdir(parents=True)
    recordings = {}
    for name, rows in (("user01_fluorescent", [(1, 100, 5000), (11, 6000, 9000)]), ("user24_led", [(3, 0, 4000)])):
        ev = random_events(rng, 600, span=10_000)
        write_aedat31(folder / f"{name}.aedat", ev, packet=64)
        (folder / f"{name}_labels.csv").write_text(
            "class,startTime_usec,endTime_usec\n" + "".join(f"{c},{s},{e}\n" for c, s, e in rows))
        recordings[name] = (ev, rows)
    (folder / "trials_to_train.txt").write_text("user01_fluorescent.aedat\n")
    (folder / "trials_to_test.txt").write_text("user24_led.aedat\n\n")
    return folder, recordings


def test_dvs_gesture_samples_frames_and_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    folder, recordings = make_gesture(tmp_path, rng)
    cache = tmp_path / "cache"
    train = DVSGesture(tmp_path, "train", frames=4, cache_dir=cache)
    assert len(train) == 2 and train.targets == [0, 10] and len(train.classes) == 11
    ev, rows = recordings["user01_fluorescent"]
    x, label = train[1]
    sel = ev.select((ev.t >= 6000) & (ev.t < 9000))
    assert label == 10 and x.dtype == torch.float32 and x.shape == (4, 2, 128, 128)
    np.testing.assert_array_equal(x.numpy(), naive_frames(sel, 4))
    assert len(list(cache.glob("*.npz"))) == 2  # one read of the recording cached both of its samples
    # the second sample comes from the cache: decoding the recording again would fail
    monkeypatch.setattr(events_module, "read_aedat31", lambda path: pytest.fail(f"decoded {path} again"))
    np.testing.assert_array_equal(DVSGesture(folder, "train", frames=4, cache_dir=cache)[0][0].numpy(),
                                  naive_frames(ev.select((ev.t >= 100) & (ev.t < 5000)), 4))
    monkeypatch.undo()
    test = DVSGesture(folder, "test", frames=2, cache_dir=cache, transform=lambda f: f.sum(0))
    assert test.targets == [2] and test[0][0].shape == (2, 128, 128)


def test_frame_cache_is_keyed_by_file_and_frames(tmp_path):
    rng = np.random.default_rng(3)
    write_aedat20_dvs128(tmp_path / "a.aedat", random_events(rng, 50))
    cache = FrameCache(tmp_path / "c")
    src = tmp_path / "a.aedat"
    assert cache.path(src, "T4") != cache.path(src, "T8")
    before = cache.path(src, "T4")
    write_aedat20_dvs128(src, random_events(rng, 60))  # new content -> new key (size changed)
    assert cache.path(src, "T4") != before
    target = cache.path(src, "T4")
    cache.save(target, np.ones((2, 2), np.int32))
    np.testing.assert_array_equal(cache.load(target), np.ones((2, 2)))
    target.write_bytes(b"garbage")
    assert cache.load(target) is None  # unreadable cache -> recomputed by the caller


def test_gesture_cache_follows_the_labels_file(tmp_path):
    rng = np.random.default_rng(6)
    folder, recordings = make_gesture(tmp_path, rng)
    ev, _ = recordings["user01_fluorescent"]
    cache = tmp_path / "cache"
    before = DVSGesture(folder, "train", frames=2, cache_dir=cache)[0][0]
    np.testing.assert_array_equal(before.numpy(), naive_frames(ev.select((ev.t >= 100) & (ev.t < 5000)), 2))
    # the user fixes the first row's time window: the same recording, another sample
    labels = "class,startTime_usec,endTime_usec\n1,100,1200\n11,6000,9000\n"
    (folder / "user01_fluorescent_labels.csv").write_text(labels)
    after = DVSGesture(folder, "train", frames=2, cache_dir=cache)
    np.testing.assert_array_equal(after[0][0].numpy(), naive_frames(ev.select((ev.t >= 100) & (ev.t < 1200)), 2))
    assert after[0][0].sum() < before.sum()


def test_aedat20_refuses_empty_and_foreign_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKETWIN_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(7)
    make_cifar10_dvs(tmp_path / "c10", rng, per_class=1)
    path = tmp_path / "c10" / "cat" / "cifar10_cat_0.aedat"
    header = path.read_bytes()[:path.read_bytes().index(b"# AEChip")]
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"cifar10_cat_0\.aedat holds no events \(empty\)"):
        read_aedat20_dvs128(path)
    path.write_bytes(header + b"# AEChip: Tmpdiff128\r\n")
    with pytest.raises(ValueError, match=r"cifar10_cat_0\.aedat holds no events \(a header alone\)"):
        read_aedat20_dvs128(path)
    davis = (np.arange(20, dtype=np.int64) << 12) | (5 << 22)  # DAVIS240C polarity events: x at bit 12, y at 22
    path.write_bytes(header + b"# AEChip: eu.seebetter.ini.chips.davis.DAVIS240C\r\n"
                     + np.stack([davis, np.arange(20)], 1).astype(">u4").tobytes())
    data = CIFAR10DVS(tmp_path / "c10", "all", frames=2)
    with pytest.raises(ValueError, match=r"cifar10_cat_0\.aedat was recorded with eu\.seebetter.*DAVIS240C, not a DVS"):
        data[3]
    assert not list((tmp_path / "cache").rglob("cifar10_cat_0*"))  # nothing cached for the refused file
    assert data[4][0].sum() > 0  # the others still read


def make_cifar10_dvs(root, rng, per_class=3):
    written = {}
    for name in CIFAR10DVS.classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            ev = random_events(rng, 40 + i)
            write_aedat20_dvs128(root / name / f"cifar10_{name}_{i}.aedat", ev)
            written[f"{name}_{i}"] = ev
    return written


def test_cifar10_dvs_split_orientation_and_frames(tmp_path):
    rng = np.random.default_rng(4)
    written = make_cifar10_dvs(tmp_path / "data", rng)
    cache = tmp_path / "cache"
    train = CIFAR10DVS(tmp_path / "data", "train", frames=3, cache_dir=cache)
    test = CIFAR10DVS(tmp_path / "data", "test", frames=3, cache_dir=cache)
    assert len(train) == 30 and len(test) == 0  # ceil(0.9 * 3) = 3 files per class go to train
    train = CIFAR10DVS(tmp_path / "data", "train", frames=3, train_fraction=0.5, cache_dir=cache)
    test = CIFAR10DVS(tmp_path / "data", "test", frames=3, train_fraction=0.5, cache_dir=cache)
    assert len(train) == 20 and len(test) == 10 and test.files[0].name == "cifar10_airplane_2.aedat"
    x, y = test[9]
    ev = written["truck_2"]
    flipped = Events(ev.t, 127 - ev.y, 127 - ev.x, 1 - ev.p)
    assert y == 9
    np.testing.assert_array_equal(x.numpy(), naive_frames(flipped, 3))
    sensor = CIFAR10DVS(tmp_path / "data", "test", frames=3, train_fraction=0.5, orientation="sensor",
                        cache_dir=cache)
    np.testing.assert_array_equal(sensor[9][0].numpy(), naive_frames(ev, 3))


def test_missing_and_truncated_files_are_named(tmp_path):
    rng = np.random.default_rng(5)
    ev = random_events(rng, 100)
    write_aedat31(tmp_path / "g.aedat", ev, extra_packets=False)
    raw = (tmp_path / "g.aedat").read_bytes()
    (tmp_path / "g.aedat").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match=r"g\.aedat is truncated: packet at offset \d+ needs 400 bytes"):
        read_aedat31(tmp_path / "g.aedat")
    (tmp_path / "g.aedat").write_bytes(raw[:raw.index(b"#!END-HEADER")])
    with pytest.raises(ValueError, match=r"g\.aedat: no .#!AER-DAT3.1. ... .#!END-HEADER. header"):
        read_aedat31(tmp_path / "g.aedat")
    write_aedat20_dvs128(tmp_path / "c.aedat", ev)
    raw = (tmp_path / "c.aedat").read_bytes()
    (tmp_path / "c.aedat").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"c\.aedat is truncated: \d+ bytes of events"):
        read_aedat20_dvs128(tmp_path / "c.aedat")
    with pytest.raises(ValueError, match=r"c\.aedat is AEDAT 2\.0, expected AEDAT 3\.1"):
        read_aedat31(tmp_path / "c.aedat")
    with pytest.raises(FileNotFoundError, match="nope.aedat"):
        read_aedat31(tmp_path / "nope.aedat")
    (tmp_path / "bad_labels.csv").write_text("class,startTime_usec,endTime_usec\n12,0,10\n")
    with pytest.raises(ValueError, match="bad_labels.csv, line 2: class 12"):
        read_gesture_labels(tmp_path / "bad_labels.csv")
    folder, _ = make_gesture(tmp_path / "g", rng)
    (folder / "user24_led_labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match="user24_led_labels.csv"):
        DVSGesture(folder, "test", cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="trials_to_train.txt"):
        DVSGesture(tmp_path / "elsewhere", "train")
    make_cifar10_dvs(tmp_path / "c10", rng, per_class=1)
    (tmp_path / "c10" / "ship" / "cifar10_ship_0.aedat").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \.aedat files in .*ship"):
        CIFAR10DVS(tmp_path / "c10", cache_dir=tmp_path / "cache")
