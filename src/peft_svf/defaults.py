"""Defaults shared by the command line and the library, in a module with no heavy imports.

``peft-svf <cmd> --help`` shows these values without importing torch or the trainer, and the trainer's
recipe uses the same objects, so the two can never disagree.
"""

from __future__ import annotations

# Below the sampling default of 1.0: at 1.0 the 135M model's sampled math answers were right far less often
# than its greedy ones, and a run whose first batches had no right answer drifted to cap-length answers and
# never recovered (math seed 1: 5% against the base's 19%). At 0.7 the same seed learned (docs/trainer.md).
ROLLOUT_TEMPERATURE = 0.7

# Not the experts' 0.7: z_c has a handful of labels to explore, and on the embedded model at 0.7 it settled
# on "math" for every prompt (validation 30/33% at steps 10/20, all 180 unseen prompts sent to math); at
# 1.0 the same run validated at 33/67% and routed 114 of 120 math and code prompts right (docs/adaptive.md).
CLASSIFIER_TEMPERATURE = 1.0
