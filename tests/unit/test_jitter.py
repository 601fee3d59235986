"""The reordering jitter buffer, on a fake clock."""

from __future__ import annotations

from sipbot.media.jitter import JitterBuffer
from sipbot.media.rtp import RtpPacket


def pkt(seq: int, ssrc: int = 1) -> RtpPacket:
    return RtpPacket(0, seq & 0xFFFF, seq * 160, ssrc, bytes([seq & 0xFF]))


def seqs(packets: list[RtpPacket]) -> list[int]:
    return [p.sequence for p in packets]


def test_in_order_packets_are_released_at_once() -> None:
    jb = JitterBuffer(0.06)
    assert [seqs(jb.push(pkt(n), 0.02 * n)) for n in range(100, 104)] == [
        [100],
        [101],
        [102],
        [103],
    ]
    assert jb.next_deadline() is None
    assert jb.stats.released == 4
    assert jb.stats.lost == 0


def test_reordered_packet_fills_the_gap() -> None:
    jb = JitterBuffer(0.06)
    jb.push(pkt(1), 0.0)
    assert jb.push(pkt(3), 0.01) == []
    assert jb.next_deadline() == 0.01 + 0.06
    assert seqs(jb.push(pkt(2), 0.02)) == [2, 3]
    assert jb.next_deadline() is None
    assert jb.stats.lost == 0


def test_gap_is_skipped_after_max_wait() -> None:
    jb = JitterBuffer(0.06)
    jb.push(pkt(1), 0.0)
    jb.push(pkt(3), 0.02)
    jb.push(pkt(4), 0.04)
    assert jb.poll(0.079) == []
    assert seqs(jb.poll(0.08)) == [3, 4]
    assert jb.stats.lost == 1
    # the missing packet arriving now is late, not delivered
    assert jb.push(pkt(2), 0.09) == []
    assert jb.stats.late == 1
    assert seqs(jb.push(pkt(5), 0.1)) == [5]


def test_two_gaps_wait_for_their_own_packets() -> None:
    jb = JitterBuffer(0.06)
    jb.push(pkt(1), 0.0)
    jb.push(pkt(3), 0.0)
    jb.push(pkt(6), 0.05)
    assert seqs(jb.poll(0.06)) == [3]  # 3 waited 60 ms; 6 has waited only 10 ms
    assert jb.stats.lost == 1
    assert seqs(jb.push(pkt(4), 0.07)) == [4]
    assert seqs(jb.poll(0.11)) == [6]
    assert jb.stats.lost == 2


def test_duplicates_are_dropped() -> None:
    jb = JitterBuffer(0.06)
    jb.push(pkt(1), 0.0)
    assert jb.push(pkt(1), 0.0) == []  # already released
    jb.push(pkt(3), 0.0)
    assert jb.push(pkt(3), 0.0) == []  # already held
    assert (jb.stats.late, jb.stats.duplicates) == (1, 1)


def test_too_many_held_packets_skip_the_gap() -> None:
    jb = JitterBuffer(1.0, max_packets=4)
    jb.push(pkt(1), 0.0)
    for n in range(3, 7):
        assert jb.push(pkt(n), 0.0) == []
    assert seqs(jb.push(pkt(7), 0.0)) == [3, 4, 5, 6, 7]
    assert jb.stats.lost == 1


def test_sequence_wraps() -> None:
    jb = JitterBuffer(0.06)
    jb.push(pkt(65534), 0.0)
    assert jb.push(pkt(0), 0.0) == []
    assert seqs(jb.push(pkt(65535), 0.0)) == [65535, 0]


def test_ssrc_change_releases_held_then_restarts() -> None:
    jb = JitterBuffer(0.06)
    jb.push(pkt(1), 0.0)
    jb.push(pkt(3), 0.0)
    released = jb.push(pkt(500, ssrc=2), 0.0)
    assert [(p.ssrc, p.sequence) for p in released] == [(1, 3), (2, 500)]
    assert seqs(jb.push(pkt(501, ssrc=2), 0.0)) == [501]
    assert jb.stats.restarts == 1


def test_big_sequence_jump_restarts_both_ways() -> None:
    jb = JitterBuffer(0.06)
    jb.push(pkt(1000), 0.0)
    assert seqs(jb.push(pkt(1200), 0.0)) == [1200]
    assert seqs(jb.push(pkt(1201), 0.0)) == [1201]
    assert seqs(jb.push(pkt(50), 0.0)) == [50]
    assert jb.stats.restarts == 2
    assert jb.stats.lost == 0


def test_burst_of_fifty_in_order_packets() -> None:
    jb = JitterBuffer(0.06)
    released = [p for n in range(50) for p in jb.push(pkt(n), 1.0)]
    assert seqs(released) == list(range(50))


def test_reset_forgets_the_stream() -> None:
    jb = JitterBuffer(0.06)
    jb.push(pkt(1), 0.0)
    jb.push(pkt(3), 0.0)
    jb.reset()
    assert jb.next_deadline() is None
    assert seqs(jb.push(pkt(9), 0.0)) == [9]
    assert jb.stats.restarts == 0
