"""Property tests (hypothesis): the list-file parser, config overrides and the samplers hold their
contracts on generated inputs, not only on the hand-picked ones."""

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpt.config import ConfigError, apply_overrides, from_dict
from lpt.data import ClassBalancedSampler, InstanceSampler, read_list_file

SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# Path characters: letters (non-ASCII too), digits, punctuation and inner spaces; no line breaks.
path_chars = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85")
paths = st.text(path_chars, min_size=1, max_size=30).map(str.strip).filter(bool)


@SETTINGS
@given(rows=st.lists(st.tuples(paths, st.integers(0, 10_000)), min_size=1, max_size=20))
def test_list_file_round_trip(tmp_path, rows):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p} {label}\n" for p, label in rows), encoding="utf-8")
    got_paths, got_labels = read_list_file(listing, check_files=False)
    assert got_paths == [p for p, _ in rows]
    assert got_labels == [label for _, label in rows]


@SETTINGS
@given(path=paths, label=st.text(string.ascii_letters + "-.", min_size=1, max_size=5))
def test_list_file_non_integer_label_names_the_line(tmp_path, path, label):
    listing = tmp_path / "bad.txt"
    listing.write_text(f"ok.png 0\n{path} {label}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{listing}:2"):
        read_list_file(listing, check_files=False)


@settings(max_examples=60, deadline=None, database=None)
@given(epochs=st.integers(1, 10**6), lr=st.floats(1e-6, 1e3, allow_nan=False), batch=st.integers(1, 4096),
       backbone=st.text(string.ascii_lowercase + "_.0123456789", min_size=1, max_size=40))
def test_overrides_set_typed_values(epochs, lr, batch, backbone):
    data = apply_overrides({}, [f"phase2.epochs={epochs}", f"phase1.lr={lr!r}", f"phase1.batch_size={batch}",
                                f"model.backbone='{backbone}'"])
    cfg = from_dict(data)
    assert (cfg.phase2.epochs, cfg.phase1.lr, cfg.phase1.batch_size, cfg.model.backbone) == (epochs, lr, batch,
                                                                                             backbone)


@settings(max_examples=60, deadline=None, database=None)
@given(section=st.sampled_from(["", "data.", "model.", "phase1.", "loss."]),
       name=st.text(string.ascii_lowercase + "_", min_size=1, max_size=12))
def test_unknown_override_keys_are_refused(section, name):
    known = {"data", "model", "loss", "phase1", "phase2", "phases", "seed", "device", "precision", "method",
             "eval_batch_size", "init", "checkpoint_every", "deterministic", "progress"}
    from lpt.config import Config, DataConfig, LossConfig, ModelConfig, PhaseConfig
    fields = {"": Config, "data.": DataConfig, "model.": ModelConfig, "phase1.": PhaseConfig, "loss.": LossConfig}
    if name in fields[section].__dataclass_fields__ or (not section and name in known):
        return
    with pytest.raises(ConfigError, match=f"unknown config key '{section}{name}'"):
        apply_overrides({}, [f"{section}{name}=1"])


targets_strategy = st.lists(st.integers(0, 7), min_size=1, max_size=120)


@settings(max_examples=60, deadline=None, database=None)
@given(targets=targets_strategy, world=st.integers(1, 4), seed=st.integers(0, 2**31), epoch=st.integers(0, 5),
       per_class=st.integers(1, 5))
def test_shards_partition_the_global_sequence(targets, world, seed, epoch, per_class):
    for make in (lambda r: InstanceSampler(len(targets), seed, r, world),
                 lambda r: ClassBalancedSampler(targets, per_class, None, seed, r, world)):
        shards = []
        for rank in range(world):
            sampler = make(rank)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        order = make(0)
        order.set_epoch(epoch)
        full = order.global_order()
        assert len(full) % world == 0 and all(len(s) == len(full) // world for s in shards)
        assert [shards[i % world][i // world] for i in range(len(full))] == full  # disjoint positions, union = all
        assert all(0 <= i < len(targets) for i in full)


@settings(max_examples=60, deadline=None, database=None)
@given(targets=targets_strategy, seed=st.integers(0, 2**31), per_class=st.integers(1, 5))
def test_class_balanced_sampler_only_draws_present_classes_in_runs(targets, seed, per_class):
    sampler = ClassBalancedSampler(targets, per_class, None, seed, 0, 1)
    order = sampler.global_order()
    labels = [targets[i] for i in order]
    assert set(labels) <= set(targets)
    # Images come in runs of per_class from one class (the last run may be cut short).
    for start in range(0, len(labels) - per_class + 1, per_class):
        assert len(set(labels[start:start + per_class])) == 1


@settings(max_examples=60, deadline=None, database=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 2**31), epoch=st.integers(0, 9))
def test_instance_sampler_is_a_permutation(n, seed, epoch):
    sampler = InstanceSampler(n, seed, 0, 1)
    sampler.set_epoch(epoch)
    assert sorted(sampler) == list(range(n))
