"""data.decode: the fast (DCT-scaled, lpt.data.decode) and GPU (lpt.data.gpu_decode, run here with device cpu) paths
draw exactly the exact path's crop boxes and flips, and their crops differ from the exact path's by the measured bounds;
unreadable files fail as on the exact path; a run without CUDA falls back from gpu to fast with one line."""

import io
import logging
import math

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image, ImageOps

from lpt.config import ConfigError, DataConfig, load_config
from lpt.data import TrainImages, build_train_stream, build_transform, train_images
from lpt.data.datasets import ArrayImageDataset, BadImageError, FileImageDataset, load_rgb
from lpt.data import decode as decode_module
from lpt.data.decode import Box, FastCrop, FileCrops, ends_whole, reduction_for
from lpt.data.gpu_decode import (DeviceDecode, EncodedBatch, EncodedCrop, EncodedImage, collate_encoded, decode_jpeg,
                                 gpu_decode_problem, resolve_decode)

pytestmark = pytest.mark.usefixtures("one_thread")


def photo_like(width: int, height: int, seed: int) -> np.ndarray:
    """bench/loader.py's synthetic content: smooth random colour plus per-pixel noise of +-12."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    return (smooth + rng.integers(-12, 13, (height, width, 3))).clip(0, 255).astype(np.uint8)


def save(path, pixels: np.ndarray, **kwargs):
    Image.fromarray(pixels).save(path, **kwargs)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """JPEGs (several sizes, an extreme aspect ratio whose box is torchvision's fallback, greyscale, progressive,
    CMYK) and a PNG."""
    root = tmp_path_factory.mktemp("decode")
    out = {f"jpeg{w}x{h}": save(root / f"{w}x{h}.jpg", photo_like(w, h, w), quality=90)
           for w, h in ((300, 260), (120, 90), (57, 41), (400, 40), (800, 600))}
    out["grey"] = save(root / "grey.jpg", photo_like(200, 150, 1)[..., 0], quality=90)
    out["progressive"] = save(root / "progressive.jpg", photo_like(160, 200, 2), quality=90, progressive=True)
    out["png"] = save(root / "image.png", photo_like(150, 130, 3))
    Image.fromarray(photo_like(180, 140, 4)).convert("CMYK").save(root / "cmyk.jpg", quality=90)
    out["cmyk"] = str(root / "cmyk.jpg")
    return out


def config(**overrides) -> DataConfig:
    cfg = DataConfig(img_size=32, interpolation="bicubic")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def exact_crop(cfg: DataConfig, path: str, key: int) -> tuple[Box, bool, torch.Tensor]:
    """The exact path's box, flip and uint8 crop for ``key``, read off its own RandomResizedCrop and flip."""
    transform = build_transform(cfg, train=True, normalize=False)
    crop, flip = transform.transforms[0], transform.transforms[1]
    seen = {"flip": False}
    make_params, flip_image = crop.make_params, flip.transform
    crop.make_params = lambda inputs: seen.setdefault("box", make_params(inputs))
    flip.transform = lambda inpt, params: seen.update(flip=True) or flip_image(inpt, params)
    torch.manual_seed(key)
    image = transform(load_rgb(path))
    return Box(**seen["box"]), seen["flip"], image


def recording(reader):
    """``reader`` whose CropDraw records every (box, flip) it draws in ``reader.drawn``."""
    draw = reader.draw if hasattr(reader, "draw") else reader.fast.draw
    reader.drawn = []

    def record(height, width):
        reader.drawn.append(draw(height, width))
        return reader.drawn[-1]
    if hasattr(reader, "draw"):
        reader.draw = record
    else:
        reader.fast.draw = record
    return reader


def keyed(reader, path: str, key: int):
    torch.manual_seed(key)
    return reader(path)


def test_fast_and_gpu_draw_the_exact_paths_boxes_and_flips(files):
    cfg = config()
    fast, encoded = recording(FastCrop(cfg)), recording(EncodedCrop(cfg))
    for name, path in files.items():
        for key in range(12):
            box, flip, _ = exact_crop(cfg, path, key)
            keyed(fast, path, key)
            item = keyed(encoded, path, key)
            assert fast.drawn[-1] == encoded.drawn[-1] == (box, flip), (name, key)
            if isinstance(item, EncodedImage):  # the loader sends what it drew
                assert (item.box, item.flip) == (box, flip)
    assert {reduction_for(b, cfg.img_size) for b, _ in fast.drawn} == {1, 2, 4, 8}  # every DCT scale ran


def crop_differences(cfg: DataConfig, paths: list[str], keys: range) -> dict[int, torch.Tensor]:
    """|exact - fast| per crop, grouped by the DCT reduction the fast path decoded at."""
    fast = recording(FastCrop(cfg))
    out: dict[int, list[torch.Tensor]] = {}
    for path in paths:
        for key in keys:
            exact = exact_crop(cfg, path, key)[2]
            diff = (keyed(fast, path, key).int() - exact.int()).abs()
            out.setdefault(reduction_for(fast.drawn[-1][0], cfg.img_size), []).append(diff)
    return {r: torch.stack(d).float() for r, d in out.items()}


def test_fast_crops_stay_within_the_measured_bounds_of_the_exact_ones(files):
    """Full scale: the same decoded pixels, torch's antialiased resize against PIL's (measured max 1 bilinear, 2
    bicubic). Reduced: the DCT-domain downscale does part of the filtering; on this noisy content measured max 13 and
    mean 1.02 (1/4 scale, 32 px) and max 9, mean 1.07 (1/2 scale, 800 x 600 at 224 px)."""
    jpegs = [files[k] for k in ("jpeg300x260", "jpeg120x90", "jpeg57x41", "jpeg400x40", "grey", "progressive")]
    cases = [(config(), jpegs, 16)] + [(config(img_size=224, interpolation=i), [files["jpeg800x600"]], 24)
                                       for i in ("bilinear", "bicubic")]
    for cfg, paths, keys in cases:
        diffs = crop_differences(cfg, paths, range(keys))
        assert diffs[1].max() <= (1 if cfg.interpolation == "bilinear" else 2)
        reduced = torch.cat([d.flatten() for r, d in diffs.items() if r > 1])
        assert reduced.max() <= 13 and reduced.mean() < 1.2


def test_png_and_cmyk_are_decoded_whole_as_on_the_exact_path(files):
    diffs = crop_differences(config(), [files["png"], files["cmyk"]], range(8))
    assert max(d.max() for d in diffs.values()) <= 2  # the exact path's pixels, torch's resize
    encoded = EncodedCrop(config())
    assert isinstance(keyed(encoded, files["png"], 0), torch.Tensor)  # the loader crops what nvJPEG is not given
    assert isinstance(keyed(encoded, files["cmyk"], 0), torch.Tensor)
    assert isinstance(keyed(encoded, files["progressive"], 0), EncodedImage)


@pytest.fixture
def broken(tmp_path, files):
    data = open(files["jpeg120x90"], "rb").read()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "not_an_image.jpg").write_bytes(b"hello")
    return [str(tmp_path / n) for n in ("truncated.jpg", "not_an_image.jpg", "missing.jpg")]


def test_an_unreadable_file_fails_with_the_exact_paths_message(broken):
    exact = FileImageDataset(broken, [0, 0, 0], ["a"])
    for reader in (FastCrop(config()), EncodedCrop(config())):
        crops = FileCrops(exact, reader)
        for i, path in enumerate(broken):
            if i == 0 and isinstance(reader, EncodedCrop):
                continue  # its header is fine: the device finds it truncated (next test)
            with pytest.raises(BadImageError) as fast_error:
                crops[i]
            with pytest.raises(BadImageError) as exact_error:
                exact[i]
            assert str(fast_error.value) == str(exact_error.value)
            assert str(fast_error.value).startswith(f"{path}: cannot read image (")


def jpegcrop():
    """The cropped decoder, which `make install` builds (CI installs libjpeg-turbo's headers first)."""
    assert decode_module._jpegcrop is not None, (
        "lpt.data._jpegcrop is not built: install libjpeg-turbo's headers (Debian/Ubuntu: apt install libjpeg-dev), "
        "then reinstall lpt (rm .venv/.installed; make install)")
    return decode_module._jpegcrop


@pytest.fixture(scope="module")
def jpeg_kinds(files, tmp_path_factory):
    """Chroma subsampling 4:4:4, 4:2:2 and 4:2:0 at a size that is no multiple of the block size, restart markers,
    greyscale and progressive JPEGs."""
    root = tmp_path_factory.mktemp("kinds")
    out = {f"subsampling{s}": save(root / f"s{s}.jpg", photo_like(203, 157, 10 + s), quality=90, subsampling=s)
           for s in (0, 1, 2)}
    out["restarts"] = save(root / "restarts.jpg", photo_like(170, 130, 13), quality=85, restart_marker_blocks=3)
    return out | {k: files[k] for k in ("grey", "progressive", "jpeg800x600")}


def regions(height: int, width: int, rng: np.random.Generator, count: int):
    """The whole image, its four corner pixels and ``count`` random regions, as (top, left, height, width)."""
    yield 0, 0, height, width
    yield from ((t, left, 1, 1) for t in (0, height - 1) for left in (0, width - 1))
    for _ in range(count):
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        yield int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


def test_the_cropped_decoder_gives_the_whole_decodes_pixels_bit_for_bit(jpeg_kinds):
    """libjpeg-turbo's partial decompression (skip above, crop around, stop below) with lpt's one-pixel margin
    equals simplejpeg's whole decode at each DCT scale, for every region, chroma subsampling and file kind."""
    rng = np.random.default_rng(0)
    for name, path in jpeg_kinds.items():
        data = open(path, "rb").read()
        for reduction in (1, 2, 4, 8):
            height, width = simplejpeg.decode_jpeg_header(data)[:2]
            whole = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // reduction),
                                           min_width=-(-width // reduction))
            for top, left, h, w in regions(*whole.shape[:2], rng, 25):
                out = np.empty((h, w, 3), np.uint8)
                jpegcrop().decode_region(data, out, reduction, top, left, h, w)
                assert np.array_equal(out, whole[top:top + h, left:left + w]), (name, reduction, top, left, h, w)


def test_fast_crops_are_the_same_with_and_without_the_cropped_decoder(files, jpeg_kinds, tmp_path, monkeypatch):
    """The extension changes the speed only: same boxes, same crops, also for a JPEG whose data is corrupt in the
    middle (both decoders refuse it and PIL decodes it, as on the exact path)."""
    data = bytearray(open(files["jpeg300x260"], "rb").read())
    data[len(data) // 2:len(data) // 2 + 40] = bytes(range(40))
    (tmp_path / "corrupt.jpg").write_bytes(data)
    paths = [*jpeg_kinds.values(), files["jpeg400x40"], files["jpeg57x41"], str(tmp_path / "corrupt.jpg")]
    cfg = config()
    cropped = [keyed(FastCrop(cfg), p, key) for p in paths for key in range(12)]
    monkeypatch.setattr(decode_module, "_jpegcrop", None)
    whole = [keyed(FastCrop(cfg), p, key) for p in paths for key in range(12)]
    assert all(torch.equal(a, b) for a, b in zip(cropped, whole))


def test_a_jpeg_truncated_below_the_box_is_still_named(files, tmp_path):
    """The cropped decoder never reads past the box, so a file without its end-of-image marker is decoded whole:
    the truncation is found whatever the box, as on the exact path."""
    data = open(files["jpeg800x600"], "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 9 // 10])
    path = str(tmp_path / "cut.jpg")
    fast = FastCrop(config())
    fast.draw = lambda height, width: (Box(0, 0, 64, 64), False)  # the top rows, which the file still holds
    out = np.empty((64, 64, 3), np.uint8)
    jpegcrop().decode_region(data[: len(data) * 9 // 10], out, 1, 0, 0, 64, 64)  # what a blind crop would accept
    with pytest.raises(BadImageError, match=rf"^{path}: cannot read image \("):
        FileCrops(FileImageDataset([path], [0], ["a"]), fast)[0]
    with pytest.raises(BadImageError, match=rf"^{path}: cannot read image \("):  # gpu: not left to nvJPEG
        FileCrops(FileImageDataset([path], [0], ["a"]), EncodedCrop(config()))[0]


def test_a_jpeg_is_whole_when_its_end_marker_follows_its_last_scan(files):
    data = open(files["jpeg800x600"], "rb").read()
    cut = data[: len(data) * 9 // 10]
    assert ends_whole(data) and ends_whole(data + bytes(16)) and ends_whole(data + b"trailing bytes \xff\x00")
    assert not ends_whole(cut) and not ends_whole(b"") and not ends_whole(b"\xff\xd8\xff\xd9")  # no scan at all
    assert not ends_whole(data[:100] + b"\xff\xd9" + cut[100:])  # an end marker before the scan: a thumbnail's
    assert isinstance(EncodedCrop(config())(files["jpeg800x600"]), EncodedImage)


def test_the_cropped_decoder_refuses_bad_input_in_one_line(files):
    data = open(files["jpeg120x90"], "rb").read()
    decode = jpegcrop().decode_region
    out = np.empty((10, 10, 3), np.uint8)
    for args, message in [((data, out, 3, 0, 0, 10, 10), "reduction must be 1, 2, 4 or 8, got 3"),
                          ((data, out, 1, 85, 0, 10, 10), "region rows 85..94, columns 0..9 outside the 90 x 120"),
                          ((data, out, 2, 0, 55, 10, 10), "columns 55..64 outside the 45 x 60 image"),
                          ((data, out, 1, -1, 0, 10, 10), "expected a non-empty region at non-negative offsets"),
                          ((data, out, 1, 0, 0, 10, 9), "out holds 300 bytes, expected 10 x 9 x 3"),
                          ((b"hello", out, 1, 0, 0, 10, 10), "Not a JPEG file"),
                          ((data[:200] + bytes(200) + data[400:], out, 1, 80, 0, 10, 10), "Corrupt JPEG data")]:
        with pytest.raises(ValueError, match=message):
            decode(*args)
    with pytest.raises(TypeError):
        decode(data, bytes(300), 1, 0, 0, 10, 10)  # out must be writable


def damaged(data: bytes, case: int, rng: np.random.Generator) -> bytes:
    """``data`` with bytes overwritten, cut short or inserted (case modulo 3)."""
    out = bytearray(data)
    if case % 3 == 0:
        for position in rng.integers(2, len(out), 8):
            out[position] = int(rng.integers(0, 256))
    elif case % 3 == 1:
        del out[int(rng.integers(2, len(out))):]
    else:
        position = int(rng.integers(2, len(out)))
        out[position:position] = rng.integers(0, 256, int(rng.integers(1, 20)), dtype=np.uint8).tobytes()
    return bytes(out)


def test_the_cropped_decoder_refuses_damaged_jpegs_without_writing_past_its_buffer(jpeg_kinds):
    """A C decoder of files from the wild: damaged data gives a ValueError or pixels, never a crash, and nothing is
    written outside ``out`` (a guard band around it keeps its pattern). 12,000 such cases ran clean when this test
    was written, 3,000 of them under AddressSanitizer; this keeps 240."""
    rng, outcomes = np.random.default_rng(5), set()
    for path in jpeg_kinds.values():
        data = open(path, "rb").read()
        height, width = simplejpeg.decode_jpeg_header(data)[:2]
        for case in range(40):
            reduction = (1, 2, 4, 8)[case % 4]
            top, left, h, w = list(regions(-(-height // reduction), -(-width // reduction), rng, 1))[-1]
            guarded = np.full(h * w * 3 + 128, 0xA5, np.uint8)
            try:
                jpegcrop().decode_region(damaged(data, case, rng), guarded[64:-64], reduction, top, left, h, w)
                outcomes.add("decoded")
            except ValueError:
                outcomes.add("refused")
            assert (guarded[:64] == 0xA5).all() and (guarded[-64:] == 0xA5).all(), (path, case)
    assert outcomes == {"decoded", "refused"}


def test_a_jpeg_the_device_cannot_decode_is_named(broken, files):
    cfg = config()
    good = keyed(EncodedCrop(cfg), files["jpeg120x90"], 0)
    cut = open(broken[0], "rb").read()  # a cut file as if it had reached the device (EncodedCrop keeps such files)
    bad = EncodedImage(torch.frombuffer(bytearray(cut), dtype=torch.uint8), good.header, Box(0, 0, 32, 32), False,
                       broken[0])
    batch, _ = collate_encoded([(good, 0), (bad, 0)])
    with pytest.raises(BadImageError, match=rf"^{broken[0]}: cannot read image on cpu \(.*data.decode=fast$"):
        DeviceDecode(cfg, "cpu")(batch)


def undo_normalise(cfg: DataConfig, images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(cfg.mean)[:, None, None], torch.tensor(cfg.std)[:, None, None]
    return ((images * std + mean) * 255).round().int()


def test_gpu_path_on_the_cpu_decodes_batches_within_one_grey_level_of_the_exact_path(files):
    cfg = config()
    paths = list(files.values())
    items = [(keyed(EncodedCrop(cfg), p, key), key) for key, p in enumerate(paths)]
    batch, labels = collate_encoded(items)
    assert isinstance(batch, EncodedBatch) and len(batch) == len(paths) and labels.tolist() == list(range(len(paths)))
    assert batch.to("cpu", non_blocking=True) is batch and batch.pin_memory() is batch
    images = DeviceDecode(cfg, "cpu")(batch)
    assert images.shape == (len(paths), 3, 32, 32) and images.dtype == torch.float32
    exact = torch.stack([exact_crop(cfg, p, key)[2] for key, p in enumerate(paths)])
    assert (undo_normalise(cfg, images) - exact.int()).abs().max() <= 1  # measured: 1 (float resize, rounded)


def file_dataset(files, cfg: DataConfig) -> FileImageDataset:
    paths = [files[k] for k in ("jpeg300x260", "jpeg120x90", "grey", "progressive", "png", "cmyk")] * 3
    return FileImageDataset(paths, [i % 3 for i in range(len(paths))], ["a", "b", "c"])


def batches(images, workers: int, start_step: int = 0) -> list[torch.Tensor]:
    stream = build_train_stream(images.dataset, "dual", 4, 2, workers, seed=5, collate=images.collate)
    stream.set_epoch(1, start_step=start_step)
    return [torch.cat([images.finish(x) for x, _ in step.values()]) for step in stream]


def test_gpu_stream_batches_do_not_depend_on_loader_processes_or_resume_and_match_the_exact_stream(files):
    cfg = config(decode="gpu", num_workers=2)
    data = file_dataset(files, cfg)
    # what train_images gives on a GPU machine, run on the CPU
    gpu = TrainImages(FileCrops(data, EncodedCrop(cfg)), DeviceDecode(cfg, "cpu"), collate_encoded)
    cfg.decode = "exact"
    exact = train_images(data, cfg, "cpu")
    steps = batches(gpu, 0)
    assert len(steps) == 5 and all(torch.equal(a, b) for a, b in zip(steps, batches(gpu, 2)))
    assert all(torch.equal(a, b) for a, b in zip(steps[2:], batches(gpu, 0, start_step=2)))
    for a, b in zip(steps, batches(exact, 0)):
        assert (undo_normalise(cfg, a) - undo_normalise(cfg, b)).abs().max() <= 1


def test_train_images_takes_the_fast_path_only_for_rrc_flip_on_image_files(files, caplog):
    resolve_decode.cache_clear()
    caplog.set_level(logging.INFO, logger="lpt")
    data = file_dataset(files, config())
    assert isinstance(train_images(data, config(decode="fast"), "cpu").dataset.reader, FastCrop)
    for cfg in (config(decode="exact"), config(decode="fast", train_aug="crop_flip")):
        exact = train_images(data, cfg, "cpu")
        assert exact.collate is None
        torch.manual_seed(0)
        got = exact.dataset[0][0]
        torch.manual_seed(0)
        assert torch.equal(got, build_transform(cfg, train=True, normalize=False)(load_rgb(data.paths[0])))
    arrays = ArrayImageDataset(np.zeros((2, 40, 40, 3), np.uint8), [0, 1], ["a", "b"])
    for _ in range(2):  # both phases ask; one line each
        assert isinstance(train_images(arrays, config(decode="fast"), "cpu").dataset, ArrayImageDataset)
        assert isinstance(train_images(data, config(decode="gpu"), "cpu").dataset.reader, FastCrop)
    assert [r.getMessage() for r in caplog.records] == [
        "data.decode=fast applies to train_aug=rrc_flip on image files; these training images are decoded exactly",
        "data.decode=gpu: no CUDA device (the run's device is cpu); decoding on the CPU as data.decode=fast"]


def test_without_nvjpeg_the_gpu_path_says_why(monkeypatch):
    def no_nvjpeg(*args, **kwargs):
        raise RuntimeError("torchvision was built\nwithout nvJPEG")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("lpt.data.gpu_decode.decode_jpeg", no_nvjpeg)
    gpu_decode_problem.cache_clear()
    try:
        assert gpu_decode_problem(torch.device("cuda", 0)) == (
            "no nvJPEG decode on cuda:0 (torchvision was built without nvJPEG)")
    finally:
        gpu_decode_problem.cache_clear()


def test_a_fast_path_without_the_cropped_decoder_says_so_once(monkeypatch, caplog):
    cpu = torch.device("cpu")
    for built in (True, False):
        if not built:
            monkeypatch.setattr(decode_module, "_jpegcrop", None)
        resolve_decode.cache_clear()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lpt"):
            for _ in range(2):  # both phases ask
                assert resolve_decode("fast", cpu) == "fast" and resolve_decode("gpu", cpu) == "fast"
        notes = [r.getMessage() for r in caplog.records if "cropped JPEG decoder is not built" in r.getMessage()]
        assert notes == ([] if built else ["data.decode=fast: " + decode_module.whole_decode_note()] * 2)
    resolve_decode.cache_clear()


def test_a_bad_decode_value_is_refused_naming_key_value_and_choices():
    with pytest.raises(ConfigError, match=r"^config key 'data.decode' is 'turbo'; expected one of exact, fast, gpu$"):
        load_config("demo", ["data.decode=turbo"])
    assert load_config("demo", ["data.decode=fast"]).data.decode == "fast"
    assert DataConfig().decode == "exact"


def test_the_jpeg_bytes_travel_unchanged(files):
    item = keyed(EncodedCrop(config()), files["jpeg120x90"], 0)
    assert item.data.dtype == torch.uint8 and bytes(item.data.numpy()) == open(files["jpeg120x90"], "rb").read()
    assert item.path == files["jpeg120x90"] and Image.open(io.BytesIO(bytes(item.data.numpy()))).size == (120, 90)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """DIR/train/<class>/<i>.jpg: 5 classes of 6 noisy 120 x 90 JPEGs whose bright band depends on the class."""
    root = tmp_path_factory.mktemp("jpeg_folder")
    for c in range(5):
        (root / "train" / f"class_{c}").mkdir(parents=True)
        for i in range(6):
            pixels = photo_like(120, 90, 10 * c + i)
            pixels[15 * c: 15 * c + 12] = 230
            save(root / "train" / f"class_{c}" / f"{i}.jpg", pixels, quality=90)
    return root


def test_lpt_train_with_decode_gpu_and_no_cuda_runs_fast_and_says_so_once(jpeg_folder, tmp_path, capsys):
    from conftest import TINY_MODEL
    from lpt.cli import main
    resolve_decode.cache_clear()
    out = tmp_path / "run"
    argv = ["train", "--config", "folder", f"data.root={jpeg_folder}", "data.holdout=0.25", "--out", str(out),
            "--quiet", "phase1.epochs=1", "phase2.epochs=1", "phase1.batch_size=8", "phase2.batch_size=8",
            "data.num_workers=0", "progress=false", "data.decode=gpu", "device=cpu", "data.train_aug=rrc_flip",
            *TINY_MODEL]
    assert main(argv) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "data.decode" in line]
    assert len(said) == 1 and said[0].endswith(
        "data.decode=gpu: no CUDA device (the run's device is cpu); decoding on the CPU as data.decode=fast")
    assert "decode: gpu" in (out / "config.yaml").read_text()  # the run's own setting, kept as set


# ----------------------------------------------------------------------------- EXIF orientation (issue 25, point 1)

# Each orientation's turn in ImageOps.exif_transpose, and its inverse: how the stored image is made from the one shown.
TURN = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90}
STORE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_270}


def lopsided(width: int, height: int) -> np.ndarray:
    """Smooth colour with a bright block at the top left: every turn and mirror of it differs from it."""
    pixels = photo_like(width, height, 7)
    pixels[: height // 3, : width // 4] = 250
    return pixels


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """Per EXIF orientation 1..8, a JPEG storing ``lopsided(256, 192)`` so that it is shown upright, and a PNG of
    what it shows (the stored pixels turned by Pillow's exif_transpose): {orientation: (jpeg, png)}."""
    root, shown = tmp_path_factory.mktemp("exif"), Image.fromarray(lopsided(256, 192))
    out = {}
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = shown.transpose(STORE[orientation]) if orientation > 1 else shown
        jpeg = root / f"o{orientation}.jpg"
        stored.save(jpeg, quality=95, exif=exif)
        with Image.open(jpeg) as image:
            upright = np.array(ImageOps.exif_transpose(image).convert("RGB"))
        out[orientation] = (str(jpeg), save(root / f"o{orientation}.png", upright))
    return out


def test_the_exact_path_shows_every_exif_orientation_upright(rotated):
    for orientation, (jpeg, png) in rotated.items():
        image = np.array(load_rgb(jpeg))
        assert np.array_equal(image, np.array(Image.open(png))), orientation  # Pillow's exif_transpose
        # and the picture itself (JPEG noise: mean 4.7; the stored image of 2, 3 or 4 differs by 60 or more)
        assert image.shape == (192, 256, 3) and np.abs(image.astype(int) - lopsided(256, 192)).mean() < 8, orientation


def reduced_crop(jpeg: str, orientation: int, box: Box, flip: bool, reduction: int, size: int) -> torch.Tensor:
    """The fast path's crop at ``1 / reduction``, worked out the other way round: the whole JPEG decoded at that scale
    (simplejpeg), turned upright by Pillow's transpose, then the box's hull cut and resized with PIL. The sides of
    ``rotated``'s images are multiples of 8, so the turned reduced image's pixel grid is the upright image's."""
    data = open(jpeg, "rb").read()
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    stored = Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=height // reduction,
                                                    min_width=width // reduction))
    shown = stored.transpose(TURN[orientation]) if orientation > 1 else stored
    top, left = box.top / reduction, box.left / reduction
    bottom, right = (box.top + box.height) / reduction, (box.left + box.width) / reduction
    hull = shown.crop((int(left), int(top), math.ceil(right), math.ceil(bottom)))
    out = hull.resize((size, size), Image.Resampling.BICUBIC,
                      box=(left - int(left), top - int(top), right - int(left), bottom - int(top)))
    out = torch.from_numpy(np.array(out)).permute(2, 0, 1)
    return out.flip(-1) if flip else out


def test_fast_crops_of_a_turned_jpeg_are_those_of_the_upright_image(rotated):
    """Bit for bit, at every DCT scale: at full scale the fast crop of a PNG of the upright pixels (the box is drawn on
    the image as shown and the stored region turned before the resize), which is within 2 grey levels of the exact
    path's; at 1/2 and 1/4 scale :func:`reduced_crop`."""
    cfg = config()
    fast = recording(FastCrop(cfg))
    reductions = set()
    for orientation, (jpeg, png) in rotated.items():
        for key in range(16):
            got, (box, flip) = keyed(fast, jpeg, key), fast.drawn[-1]
            reduction = reduction_for(box, cfg.img_size)
            reductions.add(reduction)
            if reduction == 1:
                assert torch.equal(got, keyed(FastCrop(cfg), png, key)), (orientation, key)
                assert (got.int() - exact_crop(cfg, png, key)[2].int()).abs().max() <= 2, (orientation, key)
            else:
                assert torch.equal(got, reduced_crop(jpeg, orientation, box, flip, reduction, cfg.img_size)), \
                    (orientation, key)
    assert reductions == {1, 2, 4}


def device_crop(jpeg: str, orientation: int, box: Box, flip: bool, cfg: DataConfig) -> torch.Tensor:
    """The gpu path's crop worked out the other way round: the whole JPEG decoded as stored, turned upright by
    Pillow's transpose, then the box cut, resized in float32, rounded and flipped."""
    stored = decode_jpeg(torch.frombuffer(bytearray(open(jpeg, "rb").read()), dtype=torch.uint8), torch.device("cpu"))
    shown = Image.fromarray(stored.permute(1, 2, 0).numpy())
    shown = torch.from_numpy(np.array(shown.transpose(TURN[orientation]) if orientation > 1 else shown))
    region = shown.permute(2, 0, 1)[None, :, box.top:box.top + box.height, box.left:box.left + box.width].float()
    out = torch.nn.functional.interpolate(region, size=(cfg.img_size, cfg.img_size), mode=cfg.interpolation,
                                          antialias=True)[0].round().clamp(0, 255).int()
    return out.flip(-1) if flip else out


def test_the_gpu_path_turns_each_jpeg_upright_on_the_device(rotated):
    """The device decodes each JPEG as stored; the crop of its box on the image as shown is :func:`device_crop`'s,
    and within 2 grey levels of the exact path's crop of the upright PNG (float resize against PIL's)."""
    cfg = config()
    items = [(keyed(EncodedCrop(cfg), jpeg, key), 0) for key, (jpeg, _) in enumerate(rotated.values())]
    assert [item.header.orientation for item, _ in items] == list(range(1, 9))  # all sent to the device
    images = undo_normalise(cfg, DeviceDecode(cfg, "cpu")(collate_encoded(items)[0]))
    for key, (orientation, (jpeg, png)) in enumerate(rotated.items()):
        item = items[key][0]
        assert torch.equal(images[key], device_crop(jpeg, orientation, item.box, item.flip, cfg)), orientation
        assert (images[key] - exact_crop(cfg, png, key)[2].int()).abs().max() <= 2, orientation
