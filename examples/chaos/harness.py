"""An evaluation harness: asks a model a set of questions and checks the answers.

Its retry loop is the one from the README's "Why": five attempts, a 60 s timeout each,
a sleep of 2**attempt seconds after any error. When the endpoint hangs, one question
costs 5 x 60 s + 31 s of sleep, about five and a half minutes, and nothing stops it.

``HARNESS_TIME_SCALE`` shrinks every timeout and sleep (0.01: 60 s becomes 0.6 s), so
the chaos demo (``run.py``) can show that story in seconds.
"""

from __future__ import annotations

import os
import time

import openai

MODEL = "gpt-4o-mini"
TIME_SCALE = float(os.environ.get("HARNESS_TIME_SCALE", "1"))

QUESTIONS = {  # question -> what a correct answer contains
    "What is the capital of Australia?": "Canberra",
    "How many legs does a spider have?": "eight",
    "Which planet is known as the Red Planet?": "Mars",
    "Who wrote the novel Frankenstein?": "Mary Shelley",
}


def ask(question: str, client: openai.OpenAI | None = None) -> str:
    client = client or openai.OpenAI(max_retries=0)  # the loop below does the retrying
    for attempt in range(5):
        try:
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": question}], timeout=60 * TIME_SCALE
            )
            return reply.choices[0].message.content or ""
        except Exception:
            time.sleep(2**attempt * TIME_SCALE)
    raise RuntimeError(f"no answer to {question!r} after 5 attempts")


def correct(question: str, answer: str) -> bool:
    return QUESTIONS[question].lower() in answer.lower()
