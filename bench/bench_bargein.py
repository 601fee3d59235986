"""The barge-in guard on recorded scenarios: false barge-ins, missed and late real ones, CPU.

    python bench/bench_bargein.py [--min-speech-ms N] [--keep DIR]

Every scenario is made here (nothing binary is committed): the agent talks (espeak-ng, one
voice) for the whole scenario; the caller's line carries the agent's own audio back at -20 dB
(echo, 60 ms late) and a little line noise, and at 1.5 s one event:

* negatives (must not cut the agent): backchannels "mm-hm", "okay", "yeah", "uh-huh", "right"
  (espeak-ng, two voices, as loud as the agent), coughs and noise bursts (synthesized), and the
  echo alone;
* positives (must cut it): full-sentence interruptions (two voices).

The guard (sipbot.bargein with the real Silero model) gets 20 ms frames as a call gives them.
A positive is *late* when it is confirmed more than LATE_S after its speech starts. The CPU is
the guard's (conversion, levels, Silero) per second of caller audio while the agent talks.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from sipbot.bargein import CONFIRM, DEFAULT_MIN_SPEECH_MS, BargeInGuard, GuardInput
from sipbot.domain import PCM16_16K
from sipbot.media.silero import SileroModel

RATE_HZ = 16_000
FRAME = RATE_HZ // 50  # 20 ms
EVENT_AT_S = 1.5
TAIL_S = 1.5  # agent keeps talking this long after the event
ECHO_DB = -20.0
ECHO_DELAY_S = 0.06
LEVEL_DBFS = -20.0  # agent and caller speech (RMS while active)
NOISE_DBFS = -60.0
LATE_S = 1.2
AGENT_TEXT = (
    "Your order has been shipped this morning and it should arrive on Thursday. The courier "
    "will call you about an hour before the delivery, and you can change the time slot online. "
    "Is there anything else I can help you with today?"
)
BACKCHANNELS = ("mm-hm", "okay", "yeah", "uh-huh", "right")
INTERRUPTIONS = (
    "Sorry, wait, I need to change the delivery address.",
    "No, that is not what I asked for at all.",
    "Can you repeat the part about the price please?",
    "Stop, I would like to speak to a person.",
)
CALLER_VOICES = ("en+f3", "en-us+m3")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    kind: str  # backchannel | cough | noise | echo | interruption
    caller: np.ndarray  # float32, 16 kHz: echo + noise + event
    agent: np.ndarray  # float32, 16 kHz
    onset_s: float | None  # where the event's sound starts (None: no event)

    @property
    def positive(self) -> bool:
        return self.kind == "interruption"


@dataclass(slots=True)
class Outcome:
    scenario: Scenario
    confirmed_at_s: float | None
    suspected: int


@dataclass(slots=True)
class Figures:
    false_barge_ins: int
    negatives: int
    missed: int
    late: int
    positives: int
    latency_ms: list[float]
    cpu_ms_per_s: float  # guard CPU per second of caller audio while the agent talks
    model_share: float  # fraction of chunks the model ran on (gate, Rule 1)
    outcomes: list[Outcome]


def speak(text: str, voice: str, directory: Path) -> np.ndarray:
    """espeak-ng → float32 16 kHz, trimmed of leading/trailing silence."""
    path = directory / f"tts-{abs(hash((text, voice)))}.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "165", "-w", str(path), text],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with wave.open(str(path)) as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    audio = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, RATE_HZ).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio


def normalize(audio: np.ndarray, dbfs: float) -> np.ndarray:
    active = audio[np.abs(audio) > 0.01]
    rms = float(np.sqrt(np.mean(active**2))) if active.size else 1.0
    return (audio * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def cough(rng: np.random.Generator, ms: int, dbfs: float) -> np.ndarray:
    """A cough-like burst: coloured noise, fast attack, exponential decay."""
    n = RATE_HZ * ms // 1000
    noise = rng.standard_normal(n).astype(np.float32)
    coloured = np.convolve(noise, np.ones(4) / 4, mode="same")  # a little low-pass
    envelope = np.minimum(1.0, np.arange(n) / (0.01 * RATE_HZ)) * np.exp(-np.arange(n) / (0.25 * n))
    return normalize((coloured * envelope).astype(np.float32), dbfs)


def burst(rng: np.random.Generator, ms: int, dbfs: float) -> np.ndarray:
    n = RATE_HZ * ms // 1000
    return normalize(rng.standard_normal(n).astype(np.float32), dbfs)


def scenarios(directory: Path, seed: int = 15) -> list[Scenario]:
    """The recorded scenarios (see the module docstring)."""
    rng = np.random.default_rng(seed)
    agent_voice = normalize(speak(AGENT_TEXT, "en-us", directory), LEVEL_DBFS)
    events: list[tuple[str, str, np.ndarray]] = []
    for voice in CALLER_VOICES:
        for word in BACKCHANNELS:
            events.append(
                (f"backchannel '{word}' ({voice})", "backchannel", speak(word, voice, directory))
            )
    events += [
        ("cough 200 ms", "cough", cough(rng, 200, -15.0)),
        ("cough 350 ms", "cough", cough(rng, 350, -12.0)),
        (
            "double cough",
            "cough",
            np.concatenate(
                [cough(rng, 250, -14.0), np.zeros(1600, np.float32), cough(rng, 300, -14.0)]
            ),
        ),
        ("noise burst 100 ms", "noise", burst(rng, 100, -15.0)),
        ("noise burst 400 ms", "noise", burst(rng, 400, -18.0)),
        ("echo only", "echo", np.zeros(0, np.float32)),
    ]
    for voice in CALLER_VOICES:
        for text in INTERRUPTIONS:
            events.append(
                (
                    f"interruption '{text[:24]}...' ({voice})",
                    "interruption",
                    speak(text, voice, directory),
                )
            )
    out = []
    for name, kind, event in events:
        if kind in ("backchannel", "interruption"):
            event = normalize(event, LEVEL_DBFS)
        total = int((EVENT_AT_S + event.size / RATE_HZ + TAIL_S) * RATE_HZ)
        agent = np.resize(agent_voice, total).astype(np.float32)
        delay = int(ECHO_DELAY_S * RATE_HZ)
        caller = np.zeros(total, np.float32)
        caller[delay:] = agent[: total - delay] * 10 ** (ECHO_DB / 20)
        caller += rng.standard_normal(total).astype(np.float32) * 10 ** (NOISE_DBFS / 20)
        start = int(EVENT_AT_S * RATE_HZ)
        caller[start : start + event.size] += event
        onset = EVENT_AT_S if event.size else None
        out.append(Scenario(name, kind, np.clip(caller, -1, 1), agent, onset))
    return out


def to_pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def run_guard(
    scenario: Scenario, min_speech_ms: int, model: SileroModel
) -> tuple[Outcome, float, int, int]:
    """Feed one scenario; returns its outcome, the CPU seconds spent, chunks, chunks scored."""
    model.reset()
    guard = BargeInGuard(model, min_speech_ms=min_speech_ms)
    caller_in = GuardInput(PCM16_16K)
    agent_in = GuardInput(PCM16_16K)
    caller_pcm, agent_pcm = to_pcm(scenario.caller), to_pcm(scenario.agent)
    step = FRAME * 2
    confirmed: float | None = None
    started = time.process_time()
    for offset in range(0, len(caller_pcm) - step + 1, step):
        guard.agent_audio(agent_in.floats(agent_pcm[offset : offset + step]))
        verdict = guard.caller_audio(caller_in.pcm16k(caller_pcm[offset : offset + step]), True)
        if verdict == CONFIRM and confirmed is None:
            confirmed = (offset // 2 + FRAME) / RATE_HZ
    cpu = time.process_time() - started
    chunks = scenario.caller.size // model.chunk_samples
    return (
        Outcome(scenario, confirmed, guard.stats.suspected),
        cpu,
        chunks,
        guard.stats.chunks_scored,
    )


def measure(min_speech_ms: int, all_scenarios: list[Scenario]) -> Figures:
    model = SileroModel()
    outcomes, cpu, seconds, chunks, scored = [], 0.0, 0.0, 0, 0
    for scenario in all_scenarios:
        outcome, spent, n, s = run_guard(scenario, min_speech_ms, model)
        outcomes.append(outcome)
        cpu += spent
        seconds += scenario.caller.size / RATE_HZ
        chunks += n
        scored += s
    negatives = [o for o in outcomes if not o.scenario.positive]
    positives = [o for o in outcomes if o.scenario.positive]
    latency = [
        1000 * (o.confirmed_at_s - (o.scenario.onset_s or 0.0))
        for o in positives
        if o.confirmed_at_s is not None
    ]
    return Figures(
        false_barge_ins=sum(o.confirmed_at_s is not None for o in negatives),
        negatives=len(negatives),
        missed=sum(o.confirmed_at_s is None for o in positives),
        late=sum(ms > LATE_S * 1000 for ms in latency),
        positives=len(positives),
        latency_ms=latency,
        cpu_ms_per_s=1000 * cpu / seconds,
        model_share=scored / max(1, chunks),
        outcomes=outcomes,
    )


def report(figures: Figures, min_speech_ms: int) -> None:
    print(f"barge-in guard, min_speech_ms={min_speech_ms}")
    for o in figures.outcomes:
        verdict = "-" if o.confirmed_at_s is None else f"cut at {o.confirmed_at_s:.2f} s"
        expected = "cut" if o.scenario.positive else "keep"
        print(f"  {o.scenario.name:60} want {expected:4}  {verdict} (suspected {o.suspected}x)")
    lat = sorted(figures.latency_ms)
    print(
        f"false barge-ins: {figures.false_barge_ins}/{figures.negatives}   "
        f"missed: {figures.missed}/{figures.positives}   late (> {LATE_S} s): {figures.late}"
    )
    if lat:
        print(
            f"confirm latency after speech onset: median {lat[len(lat) // 2]:.0f} ms, "
            f"max {lat[-1]:.0f} ms"
        )
    print(
        f"guard CPU: {figures.cpu_ms_per_s:.2f} ms per call-second while the agent talks "
        f"({figures.cpu_ms_per_s / 10:.2f} % of a core); the model ran on "
        f"{100 * figures.model_share:.0f} % of the chunks"
    )
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-speech-ms", type=int, default=DEFAULT_MIN_SPEECH_MS)
    parser.add_argument("--keep", type=Path, help="keep the generated audio here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        report(measure(args.min_speech_ms, scenarios(directory)), args.min_speech_ms)


if __name__ == "__main__":
    main()
