"""Drop-in fidelity: stock ``pipecat.services.google.stt.GoogleSTTService`` 1.14 and ours, side by side.

Each test constructs both with the same arguments and compares what a caller
can observe: public API (generically, so a new stock method is caught),
event handlers, exception types, settings after the deprecated setters, and
the frames both push for the same audio against the emulator.
"""

from __future__ import annotations

import ast
import inspect
import json
import pathlib

import pytest
from pipecat.frames.frames import InterimTranscriptionFrame, TranscriptionFrame
from pipecat.services.google.stt import GoogleSTTService as Stock
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transcriptions.language import Language

import pipecat_rxdrain
from pipecat_rxdrain.emulator import SpeechEmulator
from pipecat_rxdrain.google_clients import emulator_client
from pipecat_rxdrain.samples import load_sample
from pipecat_rxdrain.stt.service import GoogleSTTService as Ours
from tests.helpers.stt_session import audio_frames, stt_threads

HELLO = load_sample("hello_en")


def _public_names(cls) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


# ------------------------------------------------------------------ public API, generically
def test_every_public_name_on_stock_exists_on_ours():
    missing = sorted(_public_names(Stock) - _public_names(Ours))
    assert missing == [], f"stock GoogleSTTService has {missing}, ours does not"


def _kind_of(cls, name):
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, property):
        return "property"
    if isinstance(raw, (staticmethod, classmethod)):
        return type(raw).__name__
    if inspect.isclass(raw):
        return "class"
    return "callable" if callable(raw) else "attribute"


@pytest.mark.parametrize("name", sorted(_public_names(Stock)))
def test_public_member_is_compatible_with_stock(name):
    if not hasattr(Ours, name):
        pytest.fail(f"missing {name}")
    assert _kind_of(Ours, name) == _kind_of(Stock, name), name
    stock, ours = getattr(Stock, name), getattr(Ours, name)
    if _kind_of(Stock, name) not in ("callable", "staticmethod", "classmethod"):
        return
    assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(stock), f"{name}: async-ness differs"
    sp, op = inspect.signature(stock).parameters, inspect.signature(ours).parameters
    for pname, p in sp.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            assert any(q.kind == p.kind for q in op.values()), f"{name}: no {p}"
            continue
        assert pname in op, f"{name}: parameter {pname!r} missing"
        assert op[pname].kind == p.kind, f"{name}({pname}): kind differs"
        assert (op[pname].default is p.empty) == (p.default is p.empty), f"{name}({pname}): required-ness differs"
        if p.default is not p.empty:
            assert op[pname].default == p.default, f"{name}({pname}): default differs"
    extras = [q for n, q in op.items() if n not in sp]
    assert all(q.default is not q.empty or q.kind in (q.VAR_POSITIONAL, q.VAR_KEYWORD) for q in extras), (
        f"{name}: ours requires extra parameters {extras}"
    )
    # Deprecated on stock -> deprecated on ours (same message), not silently different.
    assert getattr(ours, "__deprecated__", None) == getattr(stock, "__deprecated__", None), name


def test_class_attributes_match_stock():
    assert Ours.STREAMING_LIMIT == Stock.STREAMING_LIMIT
    assert Ours.Settings is Stock.Settings and Ours.InputParams is Stock.InputParams


async def test_same_event_handlers_as_stock(no_adc, sa_info):
    creds = json.dumps(sa_info)
    stock, ours = Stock(credentials=creds), Ours(credentials=creds)
    stock_events = {n: h.is_sync for n, h in stock._event_handlers.items()}
    our_events = {n: h.is_sync for n, h in ours._event_handlers.items()}
    assert {n: s for n, s in our_events.items() if n in stock_events} == stock_events


# ------------------------------------------------------------------ deprecated setters
async def test_set_languages_same_settings_and_warning_as_stock(no_adc, sa_info):
    creds = json.dumps(sa_info)
    stock, ours = Stock(credentials=creds), Ours(credentials=creds)
    for svc in (stock, ours):
        with pytest.warns(DeprecationWarning, match="set_languages"):
            await svc.set_languages([Language.HE_IL, Language.EN_US])
    assert ours.settings == stock.settings
    assert ours._get_language_codes() == stock._get_language_codes() == ["iw-IL", "en-US"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"languages": [Language.EN_GB], "model": "telephony"},
        {"enable_interim_results": False, "profanity_filter": True, "enable_word_confidence": True},
        {"adaptation": {"phrase_sets": [{"phrases": [{"value": "rxdrain"}]}]}},
        {"adaptation": None},
        {"location": "us-central1"},
        {},
    ],
)
async def test_update_options_same_settings_and_warning_as_stock(no_adc, sa_info, kwargs):
    creds = json.dumps(sa_info)
    stock, ours = Stock(credentials=creds, sample_rate=8000), Ours(credentials=creds, sample_rate=8000)
    for svc in (stock, ours):
        with pytest.warns(DeprecationWarning, match="update_options"):
            await svc.update_options(**kwargs)
    assert ours.settings == stock.settings
    assert ours._location == stock._location


# ------------------------------------------------------------------ adaptation (our own normalizer)
@pytest.mark.parametrize(
    "adaptation",
    [
        {"phrase_sets": "projects/p/locations/global/phraseSets/x"},
        {"phrase_sets": ["projects/p/locations/global/phraseSets/x", {"phrases": [{"value": "nine", "boost": 5}]}]},
        {"phrase_sets": [{"phrase_set": "projects/p/locations/global/phraseSets/y"}]},
        {"phrase_sets": {"inline_phrase_set": {"phrases": [{"value": "order"}]}}},
        {"custom_classes": [{"name": "c", "items": [{"value": "x"}]}]},
    ],
)
async def test_adaptation_normalized_like_stock(no_adc, sa_info, adaptation):
    creds = json.dumps(sa_info)
    settings = lambda: Stock.Settings(adaptation=json.loads(json.dumps(adaptation)))  # noqa: E731
    stock = Stock(credentials=creds, settings=settings(), sample_rate=8000)
    ours = Ours(credentials=creds, settings=settings(), sample_rate=8000)
    assert ours.settings.adaptation == stock.settings.adaptation == stock._get_speech_adaptation()


async def test_bad_adaptation_entry_same_error_type_as_stock(no_adc, sa_info):
    creds = json.dumps(sa_info)
    errors = []
    for cls in (Stock, Ours):
        with pytest.raises(Exception) as e:
            cls(credentials=creds, settings=Stock.Settings(adaptation={"phrase_sets": [42]}))
        errors.append(e.value)
    assert type(errors[1]) is type(errors[0]) and str(errors[1]) == str(errors[0])


def test_telephony_skips_adaptation_like_stock():
    from pipecat_rxdrain.stt.recognition_config import model_supports_adaptation

    # Stock's rule (1.14): only the telephony model rejects SpeechAdaptation, case-insensitively.
    assert [model_supports_adaptation(m) for m in ("telephony", "TELEPHONY", "latest_long", "chirp_2", None, "")] == [
        False, False, True, True, True, True,
    ]


# ------------------------------------------------------------------ credential errors
def _bad_credentials(sa_info) -> dict[str, str]:
    return {
        "not_json": "{not json",
        "missing_fields": json.dumps({"type": "service_account", "project_id": "p"}),
        "bad_pem": json.dumps({**sa_info, "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
        "garbage_pem": json.dumps({**sa_info, "private_key": "hello"}),
        "key_not_a_string": json.dumps({**sa_info, "private_key": 5}),
        "no_project": json.dumps({k: v for k, v in sa_info.items() if k != "project_id"}),
    }


CRED_CASES = ["not_json", "missing_fields", "bad_pem", "garbage_pem", "key_not_a_string", "no_project"]


def _raised(fn):
    try:
        fn()
    except Exception as e:
        return e
    pytest.fail("no exception")


def _assert_compatible(stock_exc, our_exc, secret: str):
    # Code written against stock (``except json.JSONDecodeError``, ``except MalformedError``) catches ours.
    assert isinstance(our_exc, type(stock_exc)), (type(stock_exc), type(our_exc))
    assert secret not in str(our_exc) and secret not in repr(our_exc.args)
    assert getattr(our_exc, "doc", "") in ("", None)


@pytest.mark.parametrize("case", CRED_CASES)
async def test_bad_credentials_same_exception_type_as_stock(no_adc, sa_info, case):
    text = _bad_credentials(sa_info)[case]
    stock_exc = _raised(lambda: Stock(credentials=text))
    our_exc = _raised(lambda: Ours(credentials=text))
    _assert_compatible(stock_exc, our_exc, sa_info["private_key"][40:80])
    assert "credentials" in str(our_exc) or str(our_exc) == str(stock_exc)


@pytest.mark.parametrize("case", CRED_CASES)
async def test_bad_credentials_file_same_exception_type_as_stock(no_adc, sa_info, tmp_path, case):
    path = tmp_path / "sa.json"
    path.write_text(_bad_credentials(sa_info)[case])
    stock_exc = _raised(lambda: Stock(credentials_path=str(path)))
    our_exc = _raised(lambda: Ours(credentials_path=str(path)))
    _assert_compatible(stock_exc, our_exc, sa_info["private_key"][40:80])


@pytest.mark.parametrize("where", ["missing", "directory"])
async def test_unreadable_credentials_path_same_exception_type_as_stock(no_adc, tmp_path, where):
    path = str(tmp_path / "absent.json") if where == "missing" else str(tmp_path)
    stock_exc = _raised(lambda: Stock(credentials_path=path))
    our_exc = _raised(lambda: Ours(credentials_path=path))
    assert type(our_exc) is type(stock_exc) and our_exc.errno == stock_exc.errno and our_exc.filename == path
    assert "credentials_path" in str(our_exc)


async def test_json_that_is_not_an_object_is_a_clear_error_where_stock_crashes(no_adc):
    # Intentional deviation: stock raises AttributeError ('list' object has no attribute 'get').
    assert isinstance(_raised(lambda: Stock(credentials="[1, 2]")), AttributeError)
    err = _raised(lambda: Ours(credentials="[1, 2]"))
    assert isinstance(err, ValueError) and "credentials" in str(err)


# ------------------------------------------------------------------ frames, against the emulator
async def test_same_frames_as_stock_for_the_same_audio(sa_info, monkeypatch, no_adc):
    """Stock's own client pointed at the emulator vs ours: the same transcripts, frame types and fields."""
    creds = json.dumps(sa_info)
    down = {}
    for cls in (Stock, Ours):
        with SpeechEmulator(script=list(HELLO.segments)) as emu:
            if cls is Stock:
                svc = Stock(credentials=creds)
                svc._client = emulator_client(emu.address, api="v2", asynchronous=True)  # stock has no endpoint option
            else:
                # Turn timing off: stock has none, the frames must then be the same.
                svc = Ours(endpoint=emu.address, credentials=creds, max_queue=1000, debounce_ms=None, final_timeout_ms=None)
            frames, _ = await run_test(
                svc, frames_to_send=audio_frames(HELLO.pcm16, sleep_every=20) + [SleepFrame(sleep=1.0)]
            )
            down[cls] = [f for f in frames if isinstance(f, (TranscriptionFrame, InterimTranscriptionFrame))]
    for cls in (Stock, Ours):
        assert [f.text for f in down[cls] if isinstance(f, TranscriptionFrame)] == list(HELLO.segments), cls

    def shape(frames):
        return [
            (type(f).__name__, f.text, f.user_id, str(f.language), getattr(f, "finalized", None), type(f.result).__name__)
            for f in frames
        ]

    assert [s for s in shape(down[Ours]) if s[0] == "TranscriptionFrame"] == [
        s for s in shape(down[Stock]) if s[0] == "TranscriptionFrame"
    ]
    # Interims: the same fields, and every interim stock delivered, in order. (Stock delivered fewer
    # interims than ours here; why was not investigated. Ours are never fewer.)
    stock_interims = [s for s in shape(down[Stock]) if s[0] == "InterimTranscriptionFrame"]
    our_interims = iter([s for s in shape(down[Ours]) if s[0] == "InterimTranscriptionFrame"])
    assert stock_interims and all(s in our_interims for s in stock_interims)
    assert stt_threads() == []


# ------------------------------------------------------------------ no private Pipecat imports
def test_no_private_pipecat_imports_anywhere_in_the_package():
    root = pathlib.Path(pipecat_rxdrain.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipecat":
                if any(part.startswith("_") for part in node.module.split(".")):
                    offenders.append(f"{path.relative_to(root)}: from {node.module}")
                offenders += [f"{path.relative_to(root)}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(root)}: import {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] == "pipecat" and any(p.startswith("_") for p in a.name.split("."))
                ]
    assert offenders == []


def test_deprecated_methods_carry_stocks_deprecation():
    for name in ("set_languages", "update_options"):
        assert getattr(Ours, name).__deprecated__ == getattr(Stock, name).__deprecated__
