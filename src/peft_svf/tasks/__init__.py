"""Tasks, rewards and evaluation: the data that trains experts and the measurements that judge them.

Importing this package registers the built-in tasks: the paper's benchmarks (``gsm8k``, ``math``,
``mbpp``, ``humaneval``, ``arc_easy``, ``arc_challenge``) and the offline suite for the embedded
model (``offline_*``). See docs/tasks.md.
"""

from . import benchmarks_hub, offline
from .evaluate import EvalResult, evaluate, generate_completions, pass_at_k
from .offline import OFFLINE_TRAIN_TASKS, OFFLINE_UNSEEN_TASKS
from .registry import Task, chat_prompt, get_task, list_tasks, register_task, train_valid_split
from .rewards import RewardError, checked_reward_call, completion_text, stop_condition
from .sandbox import SandboxLimits, SandboxResult, run_program, run_programs

__all__ = [
    "OFFLINE_TRAIN_TASKS",
    "OFFLINE_UNSEEN_TASKS",
    "EvalResult",
    "RewardError",
    "SandboxLimits",
    "SandboxResult",
    "Task",
    "benchmarks_hub",
    "chat_prompt",
    "checked_reward_call",
    "completion_text",
    "evaluate",
    "generate_completions",
    "get_task",
    "list_tasks",
    "offline",
    "pass_at_k",
    "register_task",
    "run_program",
    "run_programs",
    "stop_condition",
    "train_valid_split",
]
