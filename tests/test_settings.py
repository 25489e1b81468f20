"""The one settings object: defaults, yaml + environment sources, and refusals that name the setting."""

from __future__ import annotations

import pytest

from handler.settings import InstructionMode, Precision, Settings, SettingsError


def test_defaults_are_exact_and_safe():
    settings = Settings.from_sources(None, environ={})
    assert settings.precision is Precision.AUTO
    assert settings.max_seq_length is None and settings.instruction_mode is InstructionMode.AUTO
    assert settings.max_chars_per_text < 1_000_000


def test_yaml_values_are_coerced_and_environment_overrides_yaml():
    settings = Settings.from_sources(
        {"precision": "bf16", "max_seq_length": 128, "warmup": "false", "max_batch_rows": "64"},
        environ={"INSTRUCTOR_MAX_BATCH_ROWS": "32", "INSTRUCTOR_INSTRUCTION_MODE": "prompt"},
    )
    assert settings.precision is Precision.BFLOAT16
    assert settings.max_seq_length == 128 and settings.warmup is False
    assert settings.max_batch_rows == 32 and settings.instruction_mode is InstructionMode.PROMPT


@pytest.mark.parametrize(("section", "fragment"), [
    ({"precision": "float16"}, "float16 overflows"),
    ({"precision": "fp16"}, "use bfloat16"),
    ({"precision": "fp64"}, "'precision' must be one of auto, float32, bfloat16, int8"),
    ({"max_batch_rows": 0}, "'max_batch_rows' must be >= 1"),
    ({"max_batch_tokens": "many"}, "'max_batch_tokens' must be an integer"),
    ({"max_seq_length": 1.5}, "'max_seq_length' must be an integer"),
    ({"max_seq_length": 1024, "max_batch_tokens": 512}, "must be >= max_seq_length"),
    ({"warmup": "perhaps"}, "'warmup' must be true or false"),
    ({"batch_size": 8}, "unknown setting(s) ['batch_size']"),
    ({"max_batch_request_tokens": 0}, "'max_batch_request_tokens' must be >= 1"),
    ({"tokenizer_threads": "several"}, "'tokenizer_threads' must be an integer"),
    ({"cuda_graphs": "maybe"}, "'cuda_graphs' must be true or false"),
    ({"micro_batch_overhead_tokens": -1}, "'micro_batch_overhead_tokens' must be >= 0"),
])
def test_bad_settings_are_refused_with_the_setting_named(section, fragment):
    with pytest.raises(SettingsError) as caught:
        Settings.from_sources(section, environ={})
    assert fragment in str(caught.value)


def test_measured_limits_default_to_auto_and_take_integers():
    assert Settings.from_sources({"max_batch_request_chars": "auto"}, environ={}).max_batch_request_chars is None
    settings = Settings.from_sources({"max_batch_request_tokens": "4096"},
                                     environ={"INSTRUCTOR_TOKENIZER_THREADS": "2"})
    assert settings.max_batch_request_tokens == 4096 and settings.tokenizer_threads == 2


def test_the_planner_price_of_a_micro_batch_is_the_devices_unless_set(tiny_models):
    from handler.encoder import InstructorEncoder

    model = next(iter(tiny_models.values()))
    assert InstructorEncoder(model, Settings(), "cpu").overhead_tokens == 32
    priced = InstructorEncoder(model, Settings(micro_batch_overhead_tokens=0), "cpu")
    lengths = [40, 39, 12, 11, 10, 3]
    items = priced.tokenize([("", "word " * (n - 1)) for n in lengths])
    assert priced.overhead_tokens == 0
    # Free micro-batches: each distinct length gets its own, so nothing is padded.
    assert priced.embed(items).stats.padding_ratio == 0


def test_settings_round_trip_through_as_dict():
    settings = Settings(precision=Precision.INT8, max_seq_length=64)
    assert Settings.from_sources(settings.as_dict(), environ={}) == settings
