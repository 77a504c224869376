"""Every setting refuses bad values with one clear message naming it, and keeps the old value."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, strategies as st

from korepl.settings import FIELDS, ConfigError, SettingError, apply_config, load_defaults, read_config

BAD_VALUES = {
    "greedy": ["maybe", "2", ""],
    "sampler": ["random", "", "top5"],
    "top_k": ["0", "abc", "-3", "1.5", "100001", True],
    "top_p": ["1.5", "0", "-0.1", "nan", "abc"],
    "temperature": ["-1", "0", "11", "inf", "warm"],
    "repetition_penalty": ["0", "-2", "abc", "10.5"],
    "max_new_tokens": ["0", "-1", "lots", "4097"],
    "seed": ["-1", "abc", "1.5"],
    "stop": [[""], [1, 2], 5],
    "window_keep": ["0", "1", "0.99", "half"],
    "join": ["tab", "", "3"],
    "no_repeat_ngram_size": ["-1", "21", "x"],
    "repetition_window": ["0", "-5", "some", "1.5"],
    "ban": [[""], [3], 7],
    "min_new_tokens": ["-1", "4097", "a"],
    "newline": ["", "tab", "<un used>", "unused0"],
    "window_warn": ["0.4", "1.1", "x"],
    "probs": ["maybe", "2"],
    "mode": ["talk", ""],
    "min_p": ["-0.1", "1.5", "nan", "some"],
    "stop_keep": [[""], [1], 4],
    "memory": [5, ["a list"], "가" * 20_001],
    "threads": ["-1", "1025", "many", "1.5"],
}
GOOD_VALUES = {
    "greedy": ("on", True), "sampler": ("uniform", "uniform"), "top_k": ("3", 3), "top_p": ("0.9", 0.9),
    "temperature": ("0.7", 0.7), "repetition_penalty": ("1.2", 1.2), "max_new_tokens": ("64", 64),
    "seed": ("42", 42), "stop": (["。", "</s>"], ("。", "</s>")), "window_keep": ("0.5", 0.5),
    "join": ("space", "space"),
    "no_repeat_ngram_size": ("3", 3), "repetition_window": ("64", 64), "ban": (["법률"], ("법률",)),
    "min_new_tokens": ("1", 1), "newline": ("<unused0>", "<unused0>"), "window_warn": ("0.8", 0.8),
    "probs": ("on", True), "mode": ("chat", "chat"), "min_p": ("0.05", 0.05),
    "stop_keep": (["다."], ("다.",)), "memory": ("주인공은 민수다.", "주인공은 민수다."), "threads": ("2", 2),
}


def test_table_covers_every_setting():
    assert set(BAD_VALUES) == set(GOOD_VALUES) == {f.name for f in FIELDS}


@pytest.mark.parametrize("name", [f.name for f in FIELDS])
def test_bad_values_are_refused_and_nothing_changes(name):
    settings = load_defaults().decoding
    for raw in BAD_VALUES[name]:
        with pytest.raises(SettingError) as caught:
            settings.with_value(name, raw)
        message = str(caught.value)
        assert message.startswith(name) and "\n" not in message
    assert settings == load_defaults().decoding  # frozen: the old value stays


@pytest.mark.parametrize("name", [f.name for f in FIELDS])
def test_good_values_are_taken(name):
    raw, expected = GOOD_VALUES[name]
    assert getattr(load_defaults().decoding.with_value(name, raw), name) == expected


def test_defaults_follow_the_source_study():
    config = load_defaults()
    assert config.model == "skt/kogpt2-base-v2"
    assert (config.decoding.top_k, config.decoding.repetition_penalty) == (5, 2.0)
    assert config.decoding.stop == ("</s>", "</d>") and not config.decoding.greedy


def test_seed_off_means_fresh_and_repetition_window_all_means_whole():
    settings = load_defaults().decoding.with_value("seed", "7").with_value("repetition_window", "9")
    assert settings.with_value("seed", "off").seed is None
    assert settings.with_value("repetition_window", "all").repetition_window is None
    assert load_defaults().decoding.repetition_window is None


@given(st.sampled_from([f.name for f in FIELDS]), st.one_of(st.text(max_size=20), st.integers(), st.floats()))
def test_any_value_is_taken_or_refused_cleanly(name, raw):
    settings = load_defaults().decoding
    try:
        changed = settings.with_value(name, raw)
    except SettingError:
        return
    assert dataclasses.replace(changed, **{name: getattr(settings, name)}) == settings


def test_config_file_errors_name_the_file_and_key(tmp_path):
    base = load_defaults()
    bad_toml = tmp_path / "broken.toml"
    bad_toml.write_text("[decoding]\ntop_k = = 3\n")
    with pytest.raises(ConfigError, match=r"broken.toml: .*line 2"):
        read_config(bad_toml, base)
    bad_value = tmp_path / "value.toml"
    bad_value.write_text("[decoding]\ntop_p = 1.5\n")
    with pytest.raises(ConfigError, match=r"value.toml: \[decoding\] top_p must be"):
        read_config(bad_value, base)
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        apply_config({"colour": "red"}, base, "x.toml")
    good = tmp_path / "good.toml"
    good.write_text('device = "cpu"\n[decoding]\ntop_k = 9\n')
    config = read_config(good, base)
    assert (config.device, config.decoding.top_k, config.decoding.top_p) == ("cpu", 9, base.decoding.top_p)


def test_backend_and_api_key_command_are_top_level_keys(tmp_path):
    base = load_defaults()
    assert (base.backend, base.api_key_command, base.insecure) == ("", "", False)
    config = apply_config({"backend": " http://127.0.0.1:8080/v1 ", "api_key_command": "pass show llm"}, base, "mine")
    assert (config.backend, config.api_key_command) == ("http://127.0.0.1:8080/v1", "pass show llm")
    assert apply_config({"model": "x"}, config, "later").backend == "http://127.0.0.1:8080/v1"  # layered
    with pytest.raises(ConfigError, match="mine: key 'backend' must be a text on one line"):
        apply_config({"backend": 8080}, base, "mine")
    with pytest.raises(ConfigError, match="unknown key 'insecure'.*backend, api_key_command"):
        apply_config({"insecure": True}, base, "mine")  # never from a file: a flag the user types each time
