"""Field positions in config.pbtxt text: what makes ``path:line:`` point at the offending field."""

from __future__ import annotations

from validation.locate import Key, Locator

TEXT = """# a comment with { braces } and "quotes"
name: "m"
max_batch_size: 4
input [
  {
    name: "INPUT0"
    dims: [ 4, 0 ]
  },
  { name: "I1" dims: 3 dims: 5 }
]
input { name: "I2" reshape: { shape: [ 2 ] } }
dynamic_batching { preferred_batch_size: [2, 8] }
parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/a{b}.tar.gz" } }
parameters: { key: "B" value: { string_value: 'x' "y" } }
instance_group < kind: KIND_GPU gpus: 0 >
"""


def test_singular_fields_and_comments() -> None:
    locator = Locator(TEXT)
    assert locator.position("name") == (2, 1)
    assert locator.position("max_batch_size") == (3, 1)


def test_list_and_repeated_elements_are_indexed_in_text_order() -> None:
    locator = Locator(TEXT)
    assert locator.line("input", 0) == 5
    assert locator.position("input", 0, "dims", 1) == (7, 16)
    assert locator.position("input", 1, "dims", 1) == (9, 24)
    # The bracket list and the repeated `input {}` share one index space, as in protobuf.
    assert locator.line("input", 2, "reshape", "shape", 0) == 11


def test_singular_message_needs_no_index() -> None:
    locator = Locator(TEXT)
    assert locator.position("dynamic_batching", "preferred_batch_size", 1) == (12, 46)
    assert locator.line("instance_group", 0, "gpus") == 15


def test_map_entries_are_found_by_key() -> None:
    locator = Locator(TEXT)
    assert locator.line("parameters", Key("EXECUTION_ENV_PATH")) == 13
    assert locator.line("parameters", Key("B")) == 14


def test_unknown_path_falls_back_to_nearest_ancestor_or_file() -> None:
    locator = Locator(TEXT)
    assert locator.line("input", 0, "reshape") == 5
    assert locator.position("optimization") == (0, 0)
