"""The warm transfer's consultation leg: the built-in hold audio and the Replaces value."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from sipbot.consult import HOLD_NOTE_S, HOLD_NOTES_HZ, HOLD_PERIOD_S, ConsultLeg, hold_pattern

RATE = 16_000


def test_hold_pattern_is_a_soft_chime_every_period() -> None:
    pcm = np.frombuffer(hold_pattern(7.0, RATE), dtype="<i2").astype(np.float64)
    assert len(pcm) == 7 * RATE
    period = round(HOLD_PERIOD_S * RATE)
    note = round(HOLD_NOTE_S * RATE)
    for start in (0, period, 2 * period):  # the chime repeats, silence in between
        first = pcm[start : start + note]
        second = pcm[start + note : start + 2 * note]
        for samples, hz in ((first, HOLD_NOTES_HZ[0]), (second, HOLD_NOTES_HZ[1])):
            spectrum = np.abs(np.fft.rfft(samples))
            assert abs(np.fft.rfftfreq(len(samples), 1 / RATE)[np.argmax(spectrum)] - hz) < 10
        assert not pcm[start + 2 * note : start + period].any()
    peak = np.abs(pcm).max() / 32767
    assert 0.15 < peak <= 0.2  # soft
    assert abs(pcm[0]) < 50  # faded in and out: no clicks
    assert abs(pcm[2 * note - 1]) < 400


def test_hold_pattern_is_deterministic() -> None:
    assert hold_pattern(1.0, 8_000) == hold_pattern(1.0, 8_000)
    assert len(hold_pattern(0.5, 8_000)) == 2 * 4_000


def test_replaces_names_the_dialog_as_the_target_sees_it() -> None:
    # we placed the call: the target's tag is its To tag (to-tag), ours the From tag
    dialog = SimpleNamespace(call_id="c1@127.0.0.1", remote_tag="target-tag", local_tag="our-tag")
    leg = ConsultLeg(dialog, None)  # type: ignore[arg-type]
    assert leg.replaces == "c1@127.0.0.1;to-tag=target-tag;from-tag=our-tag"
