#!/usr/bin/env python3
"""Prints the greedy continuation ids of a prompt.  Usage: generate.py MODEL_PATH PROMPT MAX_NEW_TOKENS"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import tandem  # noqa: E402


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    path, prompt, max_new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        with tandem.Model(path, threads=1) as model, model.session() as session:
            ids = session.generate(model.tokenize(prompt), max_new_tokens=max_new_tokens, stop_at_eos=False)
    except tandem.TandemError as error:
        sys.exit(f"error: {error}")
    print(" ".join(map(str, ids)))


if __name__ == "__main__":
    main()
