"""The masked caller path's shortcuts change nothing the edge sees.

The relay takes shortcuts around the masker when a batch is "plain" (every row a 172-byte
mu-law packet, clock readings in order): the payloads decoded straight from the joined
packets, one deadline-FIFO entry for the whole batch, no per-row marks when nothing changed.
These tests run the same packets through the shortcut and through the general path (the
batch flag cleared by hand) and compare what leaves; check that held packets whose deadlines
pass together leave in (deadline, arrival) order whether their deadlines sit in the FIFO or
the heap; and that lazily binned hold times equal one observation each.
"""

from __future__ import annotations

import numpy as np

from dtmf.g711 import ulaw_encode
from dtmf.masker import MaskerBank, MaskMode
from dtmf.tones import dtmf_tone, white_noise
from gateway.media.leg import LegMedia
from gateway.media.relay import HOLD_SLACK_S, LATER_VALUES, LOOKAHEAD_BOUNDS_S, CountHistogram, Relay
from gateway.media.rtp import RtpPacket

N_CALLS = 6


def relay_with_calls(n: int = N_CALLS) -> tuple[Relay, list]:
    relay = Relay(masker=MaskerBank(MaskMode.FLAT))
    legs = []
    for i in range(n):
        call = relay.add_call(f"c{i}")
        relay.configure(f"c{i}", LegMedia(("10.1.0.1", 4000 + 2 * i), None, "PCMU", 0, 101),
                        LegMedia(("10.2.0.1", 6000 + 2 * i), None, "PCMU", 0, 101))
        relay.set_capture(f"c{i}", True, now=0.0)
        legs.append(call.caller)
    return relay, legs


def caller_packets(i: int, n_packets: int, rng: np.random.Generator, payload_samples: int = 160) -> list[bytes]:
    """Quiet noise with a digit in the middle (rows the masker changes), mu-law."""
    audio = white_noise(n_packets * 160, -50, rng)
    tone = dtmf_tone("5", 90, -10)
    at = 160 * (n_packets // 3) + 37 * i
    part = audio[at:at + len(tone)]
    part += tone[:len(part)]
    codes = ulaw_encode(np.clip(audio, -32768, 32767).astype(np.int16)).tobytes()
    return [bytes(RtpPacket(payload_type=0, sequence_number=s, timestamp=160 * s, ssrc=0x100 + i,
                            payload=codes[160 * s:160 * s + payload_samples])) for s in range(n_packets)]


def drive(relay: Relay, legs: list, pkts: list[list[bytes]], general: bool) -> list:
    """Packets in 1 ms iterations (every call's packet a phase apart), timers when due; what leaves."""
    out = []
    timer = None
    for s in range(len(pkts[0])):
        for i, leg in enumerate(legs):
            now = 1.0 + 0.02 * s + 0.003 * i
            if timer is not None and timer <= now:
                out.append(("timer", timer, [(d, dest) for _, d, dest in relay.handle_timer(timer)]))
                timer = relay.get_timer()
            if (s + i) % 7 == 3:
                continue  # lost: the held packet meets its deadline
            relay.receive_rtp(leg, pkts[i][s], leg.media.remote_rtp, now)
            if general:
                relay._mask_plain = False
            out.append(("pending", now, [(d, dest) for _, d, dest in relay.process_pending(now)]))
            if relay.timer_changed:
                relay.timer_changed = False
                when = relay.get_timer()
                timer = when if timer is None or (when is not None and when < timer) else timer
    out.append(("flush", [(d, dest) for _, d, dest in relay.flush(now=10.0)]))
    return out


def test_plain_batches_leave_as_the_general_path_leaves_them() -> None:
    results = []
    for general in (False, True):
        rng = np.random.default_rng(5)
        relay, legs = relay_with_calls()
        pkts = [caller_packets(i, 30, rng) for i in range(N_CALLS)]
        results.append((drive(relay, legs, pkts, general), relay.stats.captured, relay.stats.relayed))
    plain, general = results
    sent = [d for step in plain[0] for d in step[-1]]
    assert len(sent) > 100 and any(step[0] == "timer" and step[2] for step in plain[0])
    assert plain == general


def test_masked_rows_of_a_plain_batch_are_the_masker_output() -> None:
    rng = np.random.default_rng(9)
    relay, legs = relay_with_calls(2)
    pkts = [caller_packets(i, 30, rng) for i in range(2)]
    out = drive(relay, legs, pkts, general=False)
    sent = {d[8:12] + d[2:4]: d for step in out for d, _ in step[-1]}  # by SSRC and sequence number
    originals = {p[8:12] + p[2:4]: p for p in pkts[0] + pkts[1]}
    changed = [key for key, d in sent.items() if d != originals[key]]
    assert 2 <= len(changed) < len(sent) // 2, "the digit, and only around it, is masked"
    assert all(sent[key][:12] == originals[key][:12] for key in sent)


def held_release_order(sizes: list[int]) -> tuple[list[int], list[int]]:
    """One packet per call (payload sizes given), none followed: a late timer releases all.

    Returns the order the relay released the calls in and the (deadline, arrival) order."""
    relay, legs = relay_with_calls(len(sizes))
    rng = np.random.default_rng(1)
    deadlines = []
    for i, (leg, size) in enumerate(zip(legs, sizes)):
        now = 1.0 + 0.001 * i
        pkt = caller_packets(i, 1, rng, payload_samples=size)[0]
        relay.receive_rtp(leg, pkt, leg.media.remote_rtp, now)
        relay.process_pending(now)  # one batch per packet: some plain, some not
        deadlines.append((now + size / 8000 + HOLD_SLACK_S, i))
    sends = relay.handle_timer(2.0)
    order = [int(leg.call_id[1:]) for leg, _, _ in sends]
    return order, [i for _, i in sorted(deadlines)]


def test_deadlines_in_the_fifo_and_the_heap_release_in_one_order() -> None:
    order, expected = held_release_order([160, 80, 160, 40, 160, 160, 120, 160])
    assert order == expected
    assert order != sorted(order)  # the short packets' deadlines come before longer earlier ones


def test_lazily_binned_hold_times_equal_one_observation_each() -> None:
    rng = np.random.default_rng(3)
    one, later = CountHistogram(LOOKAHEAD_BOUNDS_S), CountHistogram(LOOKAHEAD_BOUNDS_S)
    batches = []
    for b in range(200):
        now = 10.0 + b * 0.001
        since = (now - rng.uniform(0.0, 0.12, int(rng.integers(1, 40)))).tolist()
        batches.append((now, since))
    for now, since in batches:
        for t in since:
            one.observe(now - t)
        later.observe_since_later(now, since)
        assert later._later_n < LATER_VALUES  # folded once that many wait
    hist = later.histogram()
    assert list(hist.counts) == one.counts
    assert abs(hist.sum_s - one.sum_s) < 1e-9
    assert list(later.histogram().counts) == list(hist.counts)  # nothing folded twice
