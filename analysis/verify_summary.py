"""Verified consults on HumanEval: each hybrid setting's cost and quality, and whether its
answers are cloud-only's, against SLM-only and cloud-only answers made by the same build.

The hybrid rows and the baselines come from separate `hybrid eval humaneval` runs (run side by
side on two cores); this script lines them up on the problems both have answered.

    python3 analysis/verify_summary.py [FOLDER [MORE_BASELINES ...]]

The hybrid settings are FOLDER's (default assets/eval/verify). Baselines are FOLDER's, and for
problems it has none for, those of the next folders in order: answers made on another CPU
(another kernel set) may differ from this one's at near-ties, so a setting is compared with
baselines from its own machine wherever they exist.
"""
import glob
import json
import os
import sys

folders = sys.argv[1:] or ["assets/eval/verify"]


def load(folder):
    records = []
    for path in sorted(glob.glob(os.path.join(folder, "*.answers.jsonl"))):
        records += [json.loads(line) for line in open(path) if line.strip()]
    return records


records = load(folders[0])
cloud, slm = {}, {}
for folder in reversed(folders):
    for r in load(folder):
        if r["setting"] == "cloud-only":
            cloud[r["task_id"]] = r
        elif r["setting"] == "slm-only":
            slm[r["task_id"]] = r
settings = sorted({r["setting"] for r in records} - {"cloud-only", "slm-only"})

for setting in settings:
    rows = [r for r in records if r["setting"] == setting]
    tokens = sum(r["tokens"] for r in rows)
    cloud_tokens = sum(r["cloud_tokens"] for r in rows)
    withdrawn = sum(r.get("withdrawn_tokens", 0) for r in rows)
    print(f"{setting}: {len(rows)} problems, pass@1 {sum(r['passed'] for r in rows) / len(rows):.3f}, "
          f"cloud tokens {100 * cloud_tokens / tokens:.2f}%, consults/100 tokens {100 * sum(r['consults'] for r in rows) / tokens:.2f}, "
          f"corrections {sum(r.get('corrections', 0) for r in rows)}, "
          f"withdrawn {100 * withdrawn / (tokens - cloud_tokens + withdrawn):.1f}% of local tokens made, "
          f"unchecked {sum(r.get('unverified_tokens', 0) for r in rows)}")
    common = [r for r in rows if r["task_id"] in cloud and r["task_id"] in slm]
    if not common:
        continue
    passed = lambda rs: sum(r["passed"] for r in rs)
    p_hybrid, p_cloud = passed(common), passed([cloud[r["task_id"]] for r in common])
    p_slm = passed([slm[r["task_id"]] for r in common])
    gap = (p_hybrid - p_slm) / (p_cloud - p_slm) if p_cloud != p_slm else float("nan")
    same = sum(cloud[r["task_id"]]["answer"] == r["answer"] for r in common)
    only_prompt = sum(cloud[r["task_id"]]["prompt_tokens"] for r in common)
    only_answer = sum(cloud[r["task_id"]]["tokens"] for r in common)
    prefill = sum(r["cloud_prompt_tokens"] - r["cloud_cached_tokens"] for r in common)
    decode = sum(r["cloud_completion_tokens"] for r in common)
    billed = sum(r["cloud_prompt_tokens"] for r in common)
    print(f"  on the {len(common)} problems with fresh baselines: pass@1 {p_hybrid} against cloud-only {p_cloud} and SLM-only {p_slm} "
          f"(gap recovered {100 * gap:.0f}%), answers identical to cloud-only's {same}/{len(common)}; cloud rows computed "
          f"{prefill} + {decode} = {(prefill + decode) / (only_prompt + only_answer):.2f}x cloud-only's, decode steps "
          f"{decode / only_answer:.3f}x, billed tokens {(billed + decode) / (only_prompt + only_answer):.2f}x")
