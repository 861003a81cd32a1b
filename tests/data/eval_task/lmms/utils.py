"""Hooks of the edgeprune_shapes lmms-eval task: the image next to the data file, the question,
and the same exact / contains matching as `python -m runtime eval` (TensorRT-LLM eval.py's rule)."""
from pathlib import Path

from PIL import Image

DATA = Path(__file__).resolve().parents[1]


def _norm(text):
    return " ".join(str(text).strip().lower().split()).strip(" \t\n.!?,;:\"'")


def doc_to_visual(doc):
    return [Image.open(DATA / doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_target(doc):
    return doc["answers"][0]


def process_results(doc, results):
    reply = _norm(results[0])
    answers = [_norm(a) for a in doc["answers"]]
    return {"exact_match": float(reply in answers), "contains": float(any(a and a in reply for a in answers))}
