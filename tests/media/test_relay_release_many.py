"""Held packets due together leave through `Relay._release_many`, exactly as one by one.

A stall upstream (a jitter spike shared by many calls) makes many captured calls' successors
late at once. The batch path (`MaskerBank.flush_many`, its C step, the tail test for all rows)
must send the very bytes, to the same places, with the same counters and masker state, as
`_release_held` one leg at a time. Calls here mix speech, DTMF keyed across the stalls, loud
and quiet tails, mu-law and A-law callers, a law conversion and a payload-type remap.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dtmf import masker as masker_module
from dtmf.g711 import alaw_encode, ulaw_encode
from dtmf.masker import MaskerBank, MaskMode
from dtmf.tones import dtmf_tone
from gateway.media import relay as relay_module
from gateway.media.relay import TAIL_SAMPLES, Relay
from gateway.media.rtp import RtpPacket
from tests.dtmf_masker.calls import speech_like
from tests.media.test_relay import leg

PACKET = 160
PACKET_S = 0.020
PROC_S = 0.0003
N_CALLS = 12
N_PACKETS = 120
TIMER_STEP_S = 0.005


def caller_audio(i: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(100 + i)
    audio = speech_like(n * PACKET, rng, -18.0 if i % 3 else -45.0)
    if i % 2 == 0:  # keys, some across the stalls below
        for k, at in enumerate((15, 38, 61, 84)):
            tone = dtmf_tone("5" if k % 2 else "#", 90.0 + 10 * (i % 4), level_dbm0=-8.0 - i)
            start = at * PACKET + 23 * i % PACKET
            audio[start:start + len(tone)] += tone[: max(0, len(audio) - start)]
    return np.clip(np.rint(audio), -32768, 32767).astype(np.int16)


def build_relay(mode: MaskMode) -> tuple[Relay, list, list[list[bytes]]]:
    relay = Relay(masker=MaskerBank(mode))
    legs, streams = [], []
    for i in range(N_CALLS):
        alaw = i % 4 == 1
        codec = "PCMA" if alaw else "PCMU"
        pt = 8 if alaw else 0
        agent_codec = "PCMA" if i % 4 == 3 else codec  # call 3, 7, 11: mu-law caller, A-law agent
        agent_pt = 8 if agent_codec == "PCMA" else (97 if i == 2 else 0)  # call 2: PT remapped
        call = relay.add_call(f"c{i}")
        caller, agent = ("10.0.1.1", 4000 + 2 * i), ("10.0.2.1", 6000 + 2 * i)
        relay.configure(f"c{i}", leg(caller, pt=pt, codec=codec), leg(agent, pt=agent_pt, codec=agent_codec))
        relay.set_capture(f"c{i}", True, now=0.0)
        audio = caller_audio(i, N_PACKETS)
        codes = (alaw_encode(audio) if alaw else ulaw_encode(audio)).tobytes()
        streams.append([bytes(RtpPacket(payload_type=pt, sequence_number=s, timestamp=PACKET * s, ssrc=0x100 + i,
                                        payload=codes[PACKET * s:PACKET * (s + 1)])) for s in range(N_PACKETS)])
        legs.append((call.caller, caller))
    return relay, legs, streams


def arrivals() -> list[list[float]]:
    """Every call's packets on time but for shared stalls: at packets 20, 40, 62 and 85 no call's
    packet arrives for 25-45 ms, then the backlog comes in one burst."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(N_CALLS):
        phase = i * PACKET_S / N_CALLS
        t = [1.0 + phase + PACKET_S * s + float(rng.uniform(0, 0.0004)) for s in range(N_PACKETS)]
        for at, stall in ((20, 0.025), (40, 0.045), (62, 0.031), (85, 0.040)):
            resume = 1.0 + PACKET_S * at + stall
            t = [max(x, resume) if at <= s < at + 3 else x for s, x in enumerate(t)]
        out.append(t)
    return out


def run(mode: MaskMode, batch_min: int, monkeypatch) -> tuple[list, dict, np.ndarray, int]:
    """Everything that left, in order, as (time, destination, bytes); the stats; the masker's state."""
    monkeypatch.setattr(relay_module, "RELEASE_BATCH_MIN", batch_min)
    relay, legs, streams = build_relay(mode)
    calls = {"n": 0, "rows": 0}
    real = relay._release_many

    def counted(due, now):
        calls["n"] += 1
        calls["rows"] += len(due)
        return real(due, now)

    relay._release_many = counted  # type: ignore[method-assign]
    events = sorted((t, i, s) for i, ts in enumerate(arrivals()) for s, t in enumerate(ts))
    sent: list[tuple[float, tuple[str, int], bytes]] = []

    def keep(t: float, sends) -> None:
        sent.extend((round(t, 9), dest, data) for _, data, dest in sends)

    def timers_until(t: float) -> None:
        # The loop gets to its timer in 5 ms steps (a busy loop, a coarse timer): several
        # calls' deadlines have passed by then.
        while (when := relay.get_timer()) is not None and (fire := math.ceil(when / TIMER_STEP_S) * TIMER_STEP_S) <= t:
            keep(fire, relay.handle_timer(fire))

    for t, i, s in events:
        timers_until(t)
        leg_, src = legs[i]
        out = relay.receive_rtp(leg_, streams[i][s], src, t)
        if out is not None:
            keep(t, [out])
        keep(t + PROC_S, relay.process_pending(t + PROC_S))
    timers_until(events[-1][0] + 0.1)
    st = relay.stats
    stats = {"captured": st.captured, "released_at_deadline": st.released_at_deadline,
             "relayed": list(st.relayed), "lookahead": [int(c) for c in relay.stats.lookahead.histogram().counts],
             "masked_s": [leg_.last_masked_s for leg_, _ in legs]}
    return sent, stats, relay.masker._fs.copy(), calls  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", [MaskMode.SILENCE, MaskMode.COMFORT_NOISE, MaskMode.FLAT])
def test_a_burst_of_due_packets_leaves_as_it_would_one_by_one(mode, monkeypatch) -> None:
    one_sent, one_stats, one_state, one_calls = run(mode, 10**9, monkeypatch)
    many_sent, many_stats, many_state, many_calls = run(mode, 2, monkeypatch)
    assert one_calls["n"] == 0
    # The stalls do put many calls' packets due at once, through the batch path.
    assert many_calls["n"] >= 4 and many_calls["rows"] >= 3 * N_CALLS
    assert one_stats["released_at_deadline"] >= 3 * N_CALLS
    assert many_sent == one_sent
    assert many_stats == one_stats
    np.testing.assert_array_equal(many_state, one_state)
    # The run reaches the rows off the common case too: packets left with their last block
    # silenced (a loud tail at a deadline) and packets masked by the masker.
    _, _, streams = build_relay(mode)
    silenced = masked = 0
    for _, dest, data in many_sent:
        i = (dest[1] - 6000) // 2
        original = streams[i][(data[2] << 8) | data[3]]
        if i % 4 == 3 or i == 2:
            continue  # converted law or remapped PT: every packet differs
        if data[-TAIL_SAMPLES:] != original[-TAIL_SAMPLES:] and data[12:-TAIL_SAMPLES] == original[12:-TAIL_SAMPLES]:
            silenced += 1
        elif data[12:] != original[12:]:
            masked += 1
    assert silenced >= 10 and masked >= 10, (silenced, masked)


def test_flush_many_without_the_c_step_is_flush_one_by_one(monkeypatch) -> None:
    """`MaskerBank.flush_many` with and without the C step: the same rows, flags and state."""
    results = []
    for flush_quiet in (masker_module._flush_quiet, None):
        monkeypatch.setattr(masker_module, "_flush_quiet", flush_quiet)
        bank = MaskerBank(MaskMode.SILENCE)
        slots = [bank.add_stream() for _ in range(6)]
        for s in slots:
            bank.set_capture(s, True)
        rng = np.random.default_rng(11)
        for p in range(6):
            frames = np.clip(rng.normal(0, 300, (6, PACKET)), -32768, 32767).astype(np.int16)
            if p >= 4:  # a tone starting in slot 0 and 3's last packets: those rows are not quiet
                for r in (0, 3):
                    frames[r, 80:] = np.clip(dtmf_tone("1", 10, level_dbm0=-6.0), -32768, 32767)[:80]
            bank.process(np.array(slots, dtype=np.intp), frames)
        bank.flush(slots[5])  # one slot holds nothing: its row says None
        rows, changed = bank.flush_many(slots)
        results.append((rows.copy(), changed, bank._fs.copy(), bank._held.copy()))
    (rows_c, changed_c, fs_c, held_c), (rows_py, changed_py, fs_py, held_py) = results
    assert changed_c == changed_py and changed_c[5] is None
    np.testing.assert_array_equal(rows_c[:5], rows_py[:5])
    np.testing.assert_array_equal(fs_c, fs_py)
    np.testing.assert_array_equal(held_c, held_py)
