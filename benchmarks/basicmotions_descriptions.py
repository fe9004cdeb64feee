"""Class descriptions for zero-shot BasicMotions (benchmarks/bench_text_alignment.py).

Written from general knowledge of the activities before any zero-shot result with descriptions was seen, in the words
the rule captions use (intensity, amplitude, shape, rhythm), and never changed after a BasicMotions result. BasicMotions
(UEA archive) is four people wearing a smartwatch (3-axis accelerometer and gyroscope, 10 s at 10 Hz) while standing,
walking, running and playing badminton. Where each fact comes from:

- standing: a standing person's wrist hangs nearly still, so the accelerometer reads gravity plus small sway and the
  gyroscope almost nothing (the rest posture of activity-recognition datasets);
- walking: a steady gait of about 100-120 steps a minute, about 2 steps a second, with one arm swing per stride, gives
  a regular, moderate oscillation at the wrist (gait cadence norms);
- running: a cadence of about 160-180 steps a minute and a bent, forceful arm swing give faster, larger and still
  regular oscillations, with strong wrist rotation in the gyroscope (running cadence studies);
- badminton: strokes are brief explosive swings of the racket arm between footwork and pauses, so the wrist shows
  sudden large bursts and spikes with no steady rhythm (racket-sport motion analyses).

`RHYTHM_AND_CHANNELS` adds, for the model's rhythm and channel words, sentences written from the same facts before any
result with them: walking and running repeat with every stride (regular rhythm); running's bent, pumping arm swing
turns the wrist, so the gyroscope moves most (running-form descriptions); badminton's strokes are irregular bursts of
acceleration, so the accelerometer moves most and nothing repeats steadily; a standing wrist has no rhythm. Channel
names are BasicMotions' six dimensions in the archive's order, `CHANNEL_NAMES`.
"""

DESCRIPTIONS = {
    "standing": [
        "still, barely moving",
        "almost motionless, a flat signal with a tiny fluctuation",
        "very little activity, small amplitude, no rhythm",
    ],
    "walking": [
        "moderate motion with a regular oscillation",
        "a repeating wave of medium swings at an even pace",
        "steady periodic ups and downs of moderate amplitude, about two steps per second",
    ],
    "running": [
        "vigorous, intense motion with a fast regular oscillation",
        "large rapid periodic swings, the wrist rotating strongly",
        "very energetic activity with a quick repeating wave",
    ],
    "badminton": [
        "sudden irregular bursts of strong movement",
        "short sharp peaks of very large amplitude between quieter moments",
        "dramatic excursions from fast swings, with no steady rhythm",
    ],
}

CHANNEL_NAMES = ["accelerometer x", "accelerometer y", "accelerometer z", "gyroscope x", "gyroscope y", "gyroscope z"]

RHYTHM_AND_CHANNELS = {
    "standing": DESCRIPTIONS["standing"] + ["no rhythm, nothing repeats"],
    "walking": DESCRIPTIONS["walking"] + ["a regular rhythm, a steady repeating cycle of steps"],
    "running": DESCRIPTIONS["running"] + ["a fast regular rhythm", "the gyroscope moves most"],
    "badminton": DESCRIPTIONS["badminton"] + ["an irregular rhythm, bursts at irregular times",
                                              "the accelerometer moves most"],
}
