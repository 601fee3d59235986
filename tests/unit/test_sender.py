"""The outbound RTP core: one packet per slot, markers, DTMF, codec changes, pending audio."""

from __future__ import annotations

import numpy as np
import pytest

from sipbot.domain import PCMU_8K
from sipbot.errors import MediaError
from sipbot.media.codecs import G722, PCMA, PCMU, make_decoder, make_encoder
from sipbot.media.rtp import RtpPacket, parse_rtp
from sipbot.media.sender import DEFER_MAX_MS, RtpSender, convert_pending


def loud(ms: int, rate: int = 24_000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return bytes(np.rint(12_000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())


def sender(prebuffer_ms: int = 0) -> RtpSender:
    tx = RtpSender(prebuffer_ms=prebuffer_ms, max_hold_ms=40)
    tx.configure(PCMU, 0, 101)
    return tx


def slots(tx: RtpSender, count: int) -> list[RtpPacket]:
    return [parse_rtp(tx.next_packet()) for _ in range(count)]


def silent(packet: RtpPacket) -> bool:
    return packet.payload == b"\xff" * 160


def test_one_packet_per_slot_with_continuous_numbering() -> None:
    tx = sender()
    packets = slots(tx, 5)
    assert [p.marker for p in packets] == [True, False, False, False, False]  # stream start
    assert all(silent(p) and p.payload_type == 0 for p in packets)
    assert [(p.sequence - packets[0].sequence) & 0xFFFF for p in packets] == [0, 1, 2, 3, 4]
    assert [(p.timestamp - packets[0].timestamp) & 0xFFFFFFFF for p in packets] == [
        0, 160, 320, 480, 640,
    ]  # fmt: skip


def test_audio_gets_a_talkspurt_marker_and_accounting() -> None:
    tx = sender()
    slots(tx, 2)
    tx.play(loud(50), "a")
    assert tx.queued_ms() == 50
    packets = slots(tx, 4)
    assert [silent(p) for p in packets] == [False, False, False, True]
    assert [p.marker for p in packets] == [True, False, False, False]
    assert tx.played_ms("a") == 50
    assert tx.idle


def test_skip_advances_the_timestamp_only() -> None:
    tx = sender()
    first = slots(tx, 1)[0]
    tx.skip(3)
    second = slots(tx, 1)[0]
    assert second.sequence == (first.sequence + 1) & 0xFFFF
    assert (second.timestamp - first.timestamp) & 0xFFFFFFFF == 4 * 160


def test_audio_before_configure_is_kept() -> None:
    tx = RtpSender(prebuffer_ms=0)
    tx.play(loud(40), "early")
    with pytest.raises(MediaError, match="configure"):
        tx.next_packet()
    assert not tx.idle
    tx.configure(PCMU, 0, None)
    assert tx.queued_ms() == 40


def test_rfc4733_dtmf_replaces_audio_slots_and_delays_the_audio() -> None:
    tx = sender()
    slots(tx, 1)
    tx.play(loud(100), "a")
    tx.send_dtmf("7", 60)
    packets = slots(tx, 8)
    events = [p for p in packets if p.payload_type == 101]
    assert len(events) == 5  # 60 ms: 2 updates + 3 end packets
    assert {p.timestamp for p in events} == {packets[0].timestamp}
    assert events[0].marker
    assert tx.dtmf_sent == 1
    assert tx.played_ms("a") == 60  # the audio waited: only the 3 slots after the events


def test_inband_dtmf_without_telephone_event() -> None:
    tx = RtpSender(prebuffer_ms=0)
    tx.configure(PCMU, 0, None)
    tx.send_dtmf("1", 100)
    packets = slots(tx, 10)
    assert {p.payload_type for p in packets} == {0}
    assert sum(not silent(p) for p in packets) == 5
    assert tx.played_ms("dtmf") == 160  # tone + gap


def test_dropping_telephone_event_discards_pending_dtmf() -> None:
    tx = sender()
    tx.send_dtmf("123", 100)
    slots(tx, 2)
    tx.configure(PCMU, 0, None)
    assert tx.idle
    assert all(p.payload_type == 0 for p in slots(tx, 3))


def test_codec_change_keeps_or_drops_the_queue_but_keeps_accounting() -> None:
    tx = sender()
    tx.play(loud(100), "a")
    slots(tx, 1)
    tx.configure(PCMA, 8, 101)  # same pacer format (PCM16 8 kHz): the queue survives
    assert tx.queued_ms() == 80
    packet = slots(tx, 1)[0]
    assert packet.payload_type == 8
    tx.configure(G722, 9, 101)  # PCM16 16 kHz: the queue is dropped
    assert tx.queued_ms() == 0
    assert tx.played_ms("a") == 40
    assert len(slots(tx, 1)[0].payload) == 160


def test_passthrough_source_and_flush() -> None:
    tx = sender()
    tx.set_source(PCMU_8K)
    tx.play(b"\x42" * 480, "u")
    assert slots(tx, 1)[0].payload == b"\x42" * 160
    assert tx.flush() == {"u": 20}
    assert silent(slots(tx, 1)[0])


def test_want_pcm_gives_the_frame_for_the_recorder() -> None:
    tx = sender()
    tx.set_source(PCMU_8K)
    tx.play(b"\xff" * 160, "u")
    tx.next_packet(want_pcm=True)
    assert tx.last_pcm == bytes(320)


def test_send_dtmf_before_configure() -> None:
    with pytest.raises(MediaError, match="configure"):
        RtpSender().send_dtmf("1")


def test_a_ducked_sender_scales_audio_and_keeps_the_queue() -> None:
    tx = sender()
    tx.play(loud(100), "item")
    first = slots(tx, 1)[0]
    tx.gain = 0.25  # -12 dB
    ducked = slots(tx, 1)[0]
    tx.gain = 1.0
    again = slots(tx, 1)[0]
    decode = make_decoder("PCMU").decode

    def peak(packet: RtpPacket) -> int:
        return int(np.max(np.abs(np.frombuffer(decode(packet.payload), dtype="<i2"))))

    assert peak(ducked) == pytest.approx(peak(first) / 4, rel=0.1)
    assert peak(again) == pytest.approx(peak(first), rel=0.05)
    assert tx.played_ms("item") == 60  # nothing dropped


def test_ducking_leaves_silence_and_passthrough_work() -> None:
    tx = RtpSender(prebuffer_ms=0, max_hold_ms=40, source=PCMU_8K)
    tx.configure(PCMU, 0, None)
    tx.gain = 0.25
    assert silent(slots(tx, 1)[0])
    tx.play(make_encoder("PCMU").encode(loud(40, 8000)), "g711")
    payload = slots(tx, 1)[0].payload
    pcm = np.frombuffer(make_decoder("PCMU").decode(payload), dtype="<i2")
    assert 2000 < int(np.max(np.abs(pcm))) < 4000  # 12000 / 4


def test_a_phase_group_converted_in_one_batch_sends_the_same_packets() -> None:
    """Rule 9: 12 senders in different states (codecs, pre-buffers, bursts, a flush, a DTMF
    tone), converted as a group before each slot, send exactly what each sends alone."""
    rng = np.random.default_rng(9)

    def group() -> list[RtpSender]:
        senders = []
        for index in range(12):
            tx = RtpSender(prebuffer_ms=20 * (index % 4), max_hold_ms=40)
            tx.configure((PCMU, PCMA, G722)[index % 3], (0, 8, 9)[index % 3], None)
            tx.stream.ssrc, tx.stream.sequence, tx.stream.timestamp = index, 0, 0  # type: ignore[union-attr]
            senders.append(tx)
        return senders

    alone, batched = group(), group()
    for slot in range(80):
        for index in range(12):
            if (slot + index) % 6 == 5:
                continue  # this one's provider sent nothing this slot
            ms = 20 if index % 4 else int(rng.integers(1, 90))  # bursts and short chunks
            audio = loud(ms)[: 2 * int(rng.integers(1, 24 * ms + 1))]
            for tx in (alone[index], batched[index]):
                tx.play(audio, f"item-{index}-{slot // 20}")
        if slot == 40:
            assert alone[5].flush() == batched[5].flush()
        if slot == 50:
            for tx in (alone[7], batched[7]):
                tx.send_dtmf("5", 40)  # in-band: after the audio played before it
        convert_pending(batched)
        assert [tx.next_packet() for tx in batched] == [tx.next_packet() for tx in alone], slot
    assert [tx.queued_ms() for tx in batched] == [tx.queued_ms() for tx in alone]
    played = [tx.played_ms("item-3-3") for tx in alone]
    assert [tx.played_ms("item-3-3") for tx in batched] == played


def test_play_keeps_audio_until_something_reads_the_pacer() -> None:
    """Rule 9: nothing is converted in play(); queued_ms, idle and the next packet see it."""
    tx = sender(prebuffer_ms=0)
    tx.play(loud(40), "a")
    assert not tx.idle
    assert tx.pacer is not None
    assert tx.pacer.queued_bytes == 0  # kept, not yet converted
    assert tx.queued_ms() == 40  # reading converts
    tx.play(loud(20), "b")
    assert tx.flush() == {"a": 0, "b": 0}  # unconverted items are reported like queued ones
    assert tx.idle


def test_a_burst_is_converted_in_play_so_a_tick_stays_bounded() -> None:
    """Rule 9: at most DEFER_MAX_MS of provider audio waits for the tick."""
    tx = sender(prebuffer_ms=0)
    tx.play(loud(DEFER_MAX_MS), "a")
    assert tx.pacer is not None
    assert tx.pacer.queued_bytes == 0  # within the bound: kept for the tick
    tx.play(loud(20), "a")
    assert tx.pacer.queued_ms == DEFER_MAX_MS + 20  # over it: converted at once, all of it
    tx.play(loud(20), "b")
    assert tx.pacer.queued_ms == DEFER_MAX_MS + 20  # a new small chunk waits again


def test_audio_queued_answers_without_converting() -> None:
    """The barge-in guard asks per caller frame: unconverted audio counts and stays unconverted."""
    tx = sender(prebuffer_ms=0)
    assert not tx.audio_queued()
    tx.play(loud(20), "a")
    assert tx.audio_queued()
    assert tx.pacer is not None
    assert tx.pacer.queued_bytes == 0  # still waiting for its group's batch (Rule 9)
    assert tx.queued_ms() == 20  # queued_ms converts
    assert tx.audio_queued()
    tx.flush()
    assert not tx.audio_queued()
