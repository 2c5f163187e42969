"""Mutations of ``config.pbtxt`` text for the checker fuzzer, at two levels.

``token_mutation`` edits the text (numbers, names, strings, punctuation): it breaks the syntax as
often as not. ``proto_mutation`` parses the text into Triton's ``ModelConfig`` and changes fields
through the schema (any value of a field's type, unknown enum numbers, repeated elements and map
entries added or dropped), so its results parse and reach the checker's rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as mc

_TOKENS = re.compile(r'\s+|#[^\n]*|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[-+]?[\w.]+|.', re.DOTALL)
_NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]).map(str),
    st.sampled_from(["1.5", "-0", "0x10", "010", "1e3", "nan", "inf", "-inf", "1e999", "true", "False", "t"]),
)
_STRINGS = st.one_of(
    st.text(max_size=12).map(lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.sampled_from(['"\\xff"', '"\\x"', '"\\u12"', '"\\ud800"', '"a" "b"', "'single'", '""', '"\\n\\0"', '"/"']),
)
_PUNCTUATION = st.sampled_from([*"{}[]:,;<>#\"'\\", "\n", "{ }", "[ ]", ": ", "\x00", "\ufeff"])


@cache
def schema_words() -> tuple[str, ...]:
    """Every field and enum value name of Triton's ModelConfig schema."""
    words: set[str] = set()

    def walk(message: Descriptor) -> None:
        for field in message.fields:
            if field.name in words:
                continue
            words.add(field.name)
            if field.enum_type is not None:
                words.update(value.name for value in field.enum_type.values)
            if field.message_type is not None:
                walk(field.message_type)

    walk(mc.ModelConfig.DESCRIPTOR)
    return tuple(sorted(words))


@st.composite
def token_mutation(draw: st.DrawFn, text: str, donors: Sequence[str]) -> str:
    """``text`` with one token replaced, dropped, repeated, or text inserted (maybe from ``donors``), or cut short."""
    tokens = _TOKENS.findall(text)
    solid = [i for i, token in enumerate(tokens) if not token.isspace()] or [0]
    where = draw(st.sampled_from(solid))
    token = tokens[where] if tokens else ""
    kind = draw(st.sampled_from(["value"] * 4 + ["word", "delete", "duplicate", "insert", "splice", "cut"]))
    if kind == "value":
        if re.fullmatch(r"[-+]?\d[\w.]*", token):
            new = draw(_NUMBERS)
        elif token.startswith(('"', "'")):
            new = draw(_STRINGS)
        elif token.isupper():
            new = draw(st.sampled_from([word for word in schema_words() if word.isupper()]))
        else:
            new = token
        tokens[where : where + 1] = [new]
    elif kind == "word":
        tokens[where : where + 1] = [draw(st.sampled_from(schema_words()) | _NUMBERS | _PUNCTUATION)]
    elif kind == "delete":
        tokens[where : where + draw(st.integers(min_value=1, max_value=6))] = []
    elif kind == "duplicate":
        span = tokens[where : where + draw(st.integers(min_value=1, max_value=12))]
        tokens[where:where] = [*span, " "]
    elif kind == "insert":
        tokens[where:where] = [draw(_PUNCTUATION | st.text(max_size=8)), " "]
    elif kind == "splice":
        donor = _TOKENS.findall(draw(st.sampled_from(donors)))
        start = draw(st.integers(min_value=0, max_value=max(len(donor) - 1, 0)))
        tokens[where:where] = [" ", *donor[start : start + draw(st.integers(min_value=1, max_value=30))], " "]
    else:
        tokens = tokens[:where]
    return "".join(tokens)


_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
# Names the seeds use for models and tensors, so a changed reference often still points somewhere.
_NAMES = [
    "INPUT0",
    "INPUT1",
    "OUTPUT0",
    "OUT2",
    "echo",
    "echo2in",
    "ens_cycle_a",
    "ens_cycle_b",
    "messages",
    "text",
    "",
]


def _scalar(draw: st.DrawFn, field: FieldDescriptor) -> Any:
    cpp = field.cpp_type
    if cpp in _RANGES:
        low, high = _RANGES[cpp]
        usual = [value for value in (-1, 0, 1, 2, 3, 4, 8, 16, 1000, low, high) if low <= value <= high]
        return draw(st.sampled_from(usual) | st.integers(min_value=low, max_value=high))
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return draw(st.booleans())
    if cpp in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return draw(st.floats(width=32 if cpp == FieldDescriptor.CPPTYPE_FLOAT else 64))
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        return draw(st.sampled_from(known) | st.sampled_from([-1, 99, 2**31 - 1]))
    if field.type == FieldDescriptor.TYPE_BYTES:
        return draw(st.binary(max_size=8))
    return draw(st.sampled_from(_NAMES) | st.text(max_size=10))


def _mutate(draw: st.DrawFn, message: Message, depth: int) -> None:
    """Change one field somewhere under ``message`` (mostly fields already set)."""
    present = [field for field, _ in message.ListFields()]
    fields = present if present and draw(st.sampled_from([True, True, False])) else list(message.DESCRIPTOR.fields)
    if not fields:
        return  # an empty message type, such as version_policy's `all {}`
    field = draw(st.sampled_from(fields))
    value = getattr(message, field.name)
    deeper = depth < 4
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        entry, key_field = field.message_type.fields_by_name["value"], field.message_type.fields_by_name["key"]
        keys = st.sampled_from(_NAMES) if key_field.cpp_type == FieldDescriptor.CPPTYPE_STRING else st.integers(0, 9)
        key = draw(st.sampled_from(sorted(value)) | keys) if value else draw(keys)
        if value and draw(st.booleans()):
            value.pop(key, None)
        elif entry.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            if deeper:
                _mutate(draw, value[key], depth + 1)
        else:
            value[key] = _scalar(draw, entry)
    elif field.label == FieldDescriptor.LABEL_REPEATED:
        action = draw(st.sampled_from(["add", "remove", "change"])) if len(value) else "add"
        if action == "remove":
            del value[draw(st.integers(min_value=0, max_value=len(value) - 1))]
        elif field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            element = value.add() if action == "add" else value[draw(st.integers(0, len(value) - 1))]
            if deeper and draw(st.booleans()):
                _mutate(draw, element, depth + 1)
        elif action == "add":
            value.append(_scalar(draw, field))
        else:
            value[draw(st.integers(min_value=0, max_value=len(value) - 1))] = _scalar(draw, field)
    elif field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        if message.HasField(field.name) and draw(st.sampled_from([False, False, True])):
            message.ClearField(field.name)
        else:
            value.SetInParent()
            if deeper:
                _mutate(draw, value, depth + 1)
    else:
        setattr(message, field.name, _scalar(draw, field))


@st.composite
def proto_mutation(draw: st.DrawFn, text: str) -> str:
    """``text`` parsed, one to four fields changed through Triton's schema, and printed back."""
    config = mc.ModelConfig()
    text_format.Parse(text, config)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        _mutate(draw, config, 0)
    printed: str = text_format.MessageToString(config)
    return printed
