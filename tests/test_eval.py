"""`python -m runtime eval` on the tiny engines and the local task in tests/data/eval_task:
replies equal `Pipeline.generate`, accuracy by exact and contains match, agreement with the
first engine, TTFT, table and JSON; bad data files get one error line. And lmms-eval's
`openai` (openai_compatible) model evaluating a running server on the same task, when an
interpreter with lmms-eval is named by EDGEPRUNE_LMMS_EVAL_PYTHON (it is not a dependency)."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from fakes.engines import build_engine_dir
from runtime import Pipeline
from runtime.cli import main
from runtime.evaluate import contains_match, exact_match, read_data

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "tests" / "data" / "eval_task"
DATA = TASK / "shapes.jsonl"


def test_matching_rules():
    assert exact_match(" Red.", ["red"]) and not exact_match("red square", ["red"])
    assert contains_match("It is a red square.", ["red"]) and contains_match("Two", ["2", "two"])
    assert not contains_match("blue", ["red"]) and not contains_match("anything", [""])


def test_reading_data(tmp_path):
    items = read_data(DATA)
    assert len(items) == 12 and items[1].answers == ("1", "one") and items[0].image.is_file()
    vqa = tmp_path / "vqa.jsonl"
    (tmp_path / "a.png").write_bytes((TASK / "images" / "red_square.png").read_bytes())
    vqa.write_text(json.dumps({"image": "a.png", "question": "q", "answers": [{"answer": "red"}, {"answer": "x"}]})
                   + "\n\n" + json.dumps({"image": "a.png", "question": "q", "answer": "Red"}) + "\n")
    assert [i.answers for i in read_data(vqa)] == [("red", "x"), ("Red",)]
    for text, words in [("{oops", "vqa.jsonl:1: not a JSON object"), ('{"image": "a.png"}', "needs \"image\""),
                        ('{"image": "b.png", "question": "q", "answers": ["x"]}', "image b.png does not exist"),
                        ('{"image": "a.png", "question": "q"}', "needs \"answers\""), ("", "holds no lines")]:
        vqa.write_text(text + "\n")
        with pytest.raises(Exception, match=re.escape(words)):
            read_data(vqa)


def test_eval_compares_engines(tmp_path_factory, engine, tmp_path, capsys):
    none = build_engine_dir(tmp_path_factory.getbasetemp() / "engines", "none")
    out = tmp_path / "eval.json"
    assert main(["eval", "--engine-dir", none, "--engine-dir", engine, "--data", str(DATA), "--max-tokens", "4",
                 "--limit", "4", "--backend", "onnxruntime", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"none-k\S* +none +576 +576 ", table) and re.search(r"hivtp-k64\S* +hivtp +64 +64 ", table)
    result = json.loads(out.read_text())
    assert result["items"] == 4 and [e["method"] for e in result["engines"]] == ["none", "hivtp"]
    first, pruned = result["engines"]
    assert first["agreement"] == 1.0 and 0 <= pruned["agreement"] <= 1
    items = read_data(DATA, 4)
    pipe = Pipeline.from_dir(engine, backend="onnxruntime")
    replies = [pipe.generate(str(i.image), i.question, max_new_tokens=4).text for i in items]
    assert [a["reply"] for a in pruned["answers"]] == replies  # the server's request path = the pipeline
    assert pruned["exact"] == sum(exact_match(r, i.answers) for r, i in zip(replies, items)) / 4
    assert pruned["ttft_s_median"] > 0 and pruned["engine_ttft_s_median"] > 0

    # answers equal to the replies: accuracy 1 by both rules
    data = tmp_path / "echo.jsonl"
    data.write_text("".join(json.dumps({"image": str(i.image), "question": i.question, "answers": [r]}) + "\n"
                            for i, r in zip(items, replies) if r.strip(" .!?,;:\"'")))
    assert main(["eval", "--engine-dir", engine, "--data", str(data), "--max-tokens", "4", "--backend", "onnxruntime",
                 "--concurrency", "3", "--json", "-"]) == 0
    echoed = json.loads(capsys.readouterr().out.split("\n", 3)[-1])["engines"][0]
    assert echoed["exact"] == echoed["contains"] == 1.0


def test_eval_bad_input(capsys, tmp_path, engine):
    assert main(["eval", "--engine-dir", engine, "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --data {tmp_path / 'missing.jsonl'} does not exist"
    assert main(["eval", "--engine-dir", engine, "--data", str(DATA), "--max-tokens", "0"]) == 2


LMMS_PYTHON = os.environ.get("EDGEPRUNE_LMMS_EVAL_PYTHON")


@pytest.mark.skipif(not LMMS_PYTHON, reason="set EDGEPRUNE_LMMS_EVAL_PYTHON to an interpreter with lmms-eval")
def test_lmms_eval_openai_model_evaluates_the_server(engine, tmp_path):
    from runtime.serve.process import ServerProcess

    with ServerProcess(engine, "--model-name", "tiny", log_path=tmp_path / "server.log", cwd=ROOT) as srv:
        res = subprocess.run([LMMS_PYTHON, "-m", "lmms_eval", "eval", "--model", "openai", "--model_args",
                              f"model=tiny,base_url={srv.url}/v1,api_key=none", "--tasks", "edgeprune_shapes",
                              "--include_path", str(TASK / "lmms"), "--batch_size", "1", "--output_path",
                              str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert re.search(r"\|edgeprune_shapes\|none\s*\|\s*0\|contains", res.stdout + res.stderr)
        assert srv.log().count("POST /v1/chat/completions 200") == 12
