"""Every bad input a person can give: one clear message per problem, exit status 2, and no log folder.

Each case writes spec files under tmp_path, runs the command line from there (so messages name the
files as the person typed them), and checks the exact message lines, the exit status, and that the
log folder was never made.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainer.cli.commands import main
from trainer.spec.sweep import plan

REPO = Path(__file__).resolve().parents[1]
SPEC = "experiments/x.yaml"
OK = "name: ok\n"
CSV = "a,b,y\n1,2,5\n3,4,11\n"
NAME_RULE = (
    "is not a valid experiment name: use letters, digits, '.', '_' and '-', starting with a letter "
    "or digit, at most 64 characters"
)
PLAIN = "specs hold plain data (mappings, lists, numbers, strings, true/false)"
SGD_SETTINGS = "its settings: lr, momentum, nesterov, weight_decay"
ADAM_SETTINGS = "its settings: lr, betas, eps, weight_decay, amsgrad"


def spec(text: str, path: str = SPEC, others: dict[str, str] | None = None) -> dict[str, str]:
    """Files for a case: the spec at `path`, and any others by path."""
    return {path: textwrap.dedent(text), **(others or {})}


def case(files: dict[str, str], expected: list[str], *, args: list[str] | None = None, id: str):
    return pytest.param(files, args if args is not None else [SPEC], expected, id=id)


CASES = [
    # --- the file itself -----------------------------------------------------------------------
    case(
        spec("name: x\noptimizer: {kind: sgd, lr: 0.1\n"),
        [
            f"{SPEC}:3: YAML syntax error: expected ',' or '}}', but got '<stream end>' "
            f"(while parsing a flow mapping on line 2)"
        ],
        id="yaml-unclosed-brace",
    ),
    case(
        spec("name: x\noptimizer:\n  lr: 0.1\n bad: 1\n"),
        [
            f"{SPEC}:4: YAML syntax error: expected <block end>, but found '<block mapping start>' "
            f"(while parsing a block mapping on line 1); check the indentation of this line and the one before"
        ],
        id="yaml-bad-indent",
    ),
    case(
        spec("name: x\n\toptimizer: {}\n"),
        [
            f"{SPEC}:2: YAML syntax error: found character '\\t' that cannot start any token; "
            f"YAML indents with spaces, not tabs"
        ],
        id="yaml-tab",
    ),
    case(
        spec("name: x\n---\nname: y\n"),
        [
            f"{SPEC}:2: YAML syntax error: expected a single document in the stream, but found another document"
        ],
        id="yaml-two-documents",
    ),
    case(
        spec("name: x\nname: y\n"),
        [f"{SPEC}:2: name: duplicate key (first given on line 1)"],
        id="yaml-duplicate-key",
    ),
    case(
        spec("name: x\ntrain:\n  on: 1\n"),
        [f"{SPEC}:3: train: the key 'on' is read as true or false, not text; quote it: 'on'"],
        id="yaml-key-not-text",
    ),
    case(
        spec("- name: x\n- name: y\n"),
        [
            f"{SPEC}:1: the file holds a list [{{'name': 'x'}}, {{'name': 'y'}}], not a mapping; "
            f"a spec is a mapping of settings such as 'name: my-experiment'"
        ],
        id="file-is-a-list",
    ),
    case(
        spec("just some text\n"),
        [
            f"{SPEC}:1: the file holds a string 'just some text', not a mapping; "
            f"a spec is a mapping of settings such as 'name: my-experiment'"
        ],
        id="file-is-a-scalar",
    ),
    case(
        spec(""),
        [f"{SPEC}: the file is empty; a spec is a mapping of settings such as 'name: my-experiment'"],
        id="file-empty",
    ),
    case(
        spec("# name: x\n"),
        [
            f"{SPEC}: the file holds only comments; a spec is a mapping of settings such as 'name: my-experiment'"
        ],
        id="file-only-comments",
    ),
    case(
        spec(OK, "experiments/lr.yaml"),
        ["experiments/lr.yml: no such file (did you mean 'lr.yaml'?)"],
        args=["experiments/lr.yml"],
        id="file-missing",
    ),
    case(
        spec(OK, "experiments/sub/a.yaml"),
        ["experiments/sub: is a folder, not a spec file"],
        args=["experiments/sub"],
        id="file-is-a-folder",
    ),
    case(
        spec('name: x\ndescription: !!python/object/apply:os.system ["touch hacked"]\n'),
        [f"{SPEC}:2: the YAML tag !!python/object/apply:os.system is not allowed; {PLAIN}"],
        id="yaml-tag-python-object",
    ),
    case(
        spec("name: x\ndescription: !!python/name:os.system\noptimizer: {lr: !!binary aGk=}\n"),
        [
            f"{SPEC}:2: the YAML tag !!python/name:os.system is not allowed; {PLAIN}",
            f"{SPEC}:3: the YAML tag !!binary is not allowed; {PLAIN}",
        ],
        id="yaml-tags-all-reported",
    ),
    case(
        spec(
            "name: x\na0: &a0 [x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
        ),
        [
            f"{SPEC}:2: the YAML expands to more than 100,000 values in all (long lists, or anchors and aliases that "
            f"repeat a part); a spec holds a few settings"
        ],
        id="yaml-alias-bomb",
    ),
    case(
        spec("name: x\ndescription: &me [*me]\n"),
        [
            f"{SPEC}:2: the YAML is nested more than 40 levels deep (through anchors and aliases?); "
            f"a spec holds a few settings"
        ],
        id="yaml-alias-to-itself",
    ),
    case(
        spec(
            "name: x\nsweep:\n  optimizer:\n    - &sgd {kind: sgd, lr: 0.1}\n    - <<: *sgd\n"
            "      momentum: 0.9\n      lr: -1\n"
        ),
        [f"{SPEC}:7: optimizer.lr: must be > 0, got -1.0 (in run lr=-1,momentum=0.9)"],
        id="yaml-merge-key-value-names-its-line",
    ),
    # --- unknown keys --------------------------------------------------------------------------
    case(
        spec("name: x\noptimiser: {kind: sgd}\n"),
        [f"{SPEC}:2: optimiser: unknown key 'optimiser' (did you mean 'optimizer'?)"],
        id="unknown-top-level",
    ),
    case(
        spec("name: x\noptimizer:\n  kind: sgd\n  lrr: 0.1\n"),
        [f"{SPEC}:4: optimizer.lrr: unknown key 'lrr' for kind 'sgd' (did you mean 'lr'?); {SGD_SETTINGS}"],
        id="unknown-nested",
    ),
    case(
        spec("name: x\noptimizer:\n  kind: adam\n  momentum: 0.9\n"),
        [
            f"{SPEC}:4: optimizer.momentum: unknown key 'momentum' for kind 'adam' (only kind 'sgd' has it); "
            f"{ADAM_SETTINGS}"
        ],
        id="unknown-for-this-kind",
    ),
    case(
        spec("name: x\ndata: {path: d.csv, target: y}\n"),
        [
            f"{SPEC}:2: data.path: unknown key 'path' for kind 'seed_toy' (only kind 'csv' has it); its settings: "
            f"validation, split_seed, collate, loader, classes",
            f"{SPEC}:2: data.target: unknown key 'target' for kind 'seed_toy' (only kind 'csv' has it); "
            f"its settings: validation, split_seed, collate, loader, classes",
        ],
        id="unknown-kind-not-given",
    ),
    case(
        spec("name: x\ntrain:\n  steps: 10\n  batchsize: 2\n"),
        [f"{SPEC}:4: train.batchsize: unknown key 'batchsize' (did you mean 'batch_size'?)"],
        id="unknown-in-settings",
    ),
    # --- wrong types ---------------------------------------------------------------------------
    case(
        spec("name: x\noptimizer:\n  lr: fast\n"),
        [f"{SPEC}:3: optimizer.lr: must be a number, got 'fast' (a string)"],
        id="type-string-for-lr",
    ),
    case(
        spec("name: x\noptimizer:\n  lr: [0.1, 0.2]\n"),
        [f"{SPEC}:3: optimizer.lr: must be a number, got [0.1, 0.2] (a list)"],
        id="type-list-for-lr",
    ),
    case(
        spec("name: x\ntrain:\n  steps: 10.5\n"),
        [f"{SPEC}:3: train.steps: must be a whole number or null, got 10.5 (a number)"],
        id="type-float-steps",
    ),
    case(
        spec("name: x\noptimizer:\n  lr: true\n"),
        [f"{SPEC}:3: optimizer.lr: must be a number, got true (a boolean)"],
        id="type-bool-for-lr",
    ),
    case(
        spec("name: x\noptimizer:\n  lr: .nan\n"),
        [f"{SPEC}:3: optimizer.lr: must be a finite number, got nan"],
        id="type-nan",
    ),
    case(
        spec("name: x\ndata: seed_toy\n"),
        [f"{SPEC}:2: data: must be a mapping, got 'seed_toy' (a string)"],
        id="type-string-for-section",
    ),
    case(
        spec("name: x\ntrain:\n"), [f"{SPEC}:2: train: must be a mapping, got null"], id="type-empty-section"
    ),
    case(
        spec("name: x\nmodel: {kind: mlp, hidden: 32}\n"),
        [f"{SPEC}:2: model.hidden: must be a list of whole numbers, got 32 (a whole number)"],
        id="type-number-for-list",
    ),
    case(
        spec("name: x\noptimizer:\n  kind: adam\n  betas: [0.9]\n"),
        [f"{SPEC}:4: optimizer.betas: must be a list of 2 values, got 1: [0.9]"],
        id="type-short-pair",
    ),
    # --- out of range --------------------------------------------------------------------------
    case(
        spec("name: x\noptimizer:\n  lr: -0.1\n"),
        [f"{SPEC}:3: optimizer.lr: must be > 0, got -0.1"],
        id="range-lr-negative",
    ),
    case(
        spec("name: x\noptimizer:\n  lr: 0\n"),
        [f"{SPEC}:3: optimizer.lr: must be > 0, got 0.0"],
        id="range-lr-zero",
    ),
    case(
        spec("name: x\noptimizer:\n  weight_decay: -0.01\n"),
        [f"{SPEC}:3: optimizer.weight_decay: must be >= 0, got -0.01"],
        id="range-weight-decay",
    ),
    case(
        spec("name: x\ntrain:\n  batch_size: 0\n"),
        [f"{SPEC}:3: train.batch_size: must be >= 1, got 0"],
        id="range-batch-size-zero",
    ),
    case(
        spec("name: x\ntrain:\n  batch_size: 11\n"),
        [
            f"{SPEC}:3: train.batch_size: 11 is larger than the training data (10 rows); use at most 10, or 'full'"
        ],
        id="range-batch-larger-than-data",
    ),
    case(
        spec("name: x\ntrain:\n  steps: 0\n"),
        [f"{SPEC}:3: train.steps: must be >= 1, got 0"],
        id="range-steps-zero",
    ),
    case(
        spec("name: x\noptimizer:\n  momentum: 1.0\n"),
        [f"{SPEC}:3: optimizer.momentum: must be < 1, got 1.0"],
        id="range-momentum-one",
    ),
    case(
        spec("name: x\noptimizer:\n  momentum: -0.5\n"),
        [f"{SPEC}:3: optimizer.momentum: must be >= 0, got -0.5"],
        id="range-momentum-negative",
    ),
    case(
        spec("name: x\noptimizer:\n  nesterov: true\n"),
        [f"{SPEC}:3: optimizer.nesterov: needs momentum > 0 (torch refuses Nesterov without momentum)"],
        id="range-nesterov-without-momentum",
    ),
    case(
        spec("name: x\ntrain:\n  steps: 10\n  epochs: 2\n"),
        [f"{SPEC}:4: train.epochs: give either train.steps or train.epochs, not both"],
        id="range-steps-and-epochs",
    ),
    case(
        spec("name: x\nmodel: {kind: mlp, hidden: [8, 0]}\n"),
        [f"{SPEC}:2: model.hidden: item 1: must be >= 1, got 0"],
        id="range-list-item",
    ),
    # --- unknown choices -----------------------------------------------------------------------
    case(
        spec("name: x\noptimizer:\n  kind: sgdd\n"),
        [
            f"{SPEC}:3: optimizer.kind: must be one of 'sgd', 'adam', 'adamw', got 'sgdd' (did you mean 'sgd'?)"
        ],
        id="choice-optimizer-kind",
    ),
    case(
        spec("name: x\nloss:\n  reduction: summ\n"),
        [f"{SPEC}:3: loss.reduction: must be one of 'sum', 'mean', got 'summ' (did you mean 'sum'?)"],
        id="choice-reduction",
    ),
    case(
        spec("name: x\ntrain:\n  sampling: shufle\n"),
        [
            f"{SPEC}:3: train.sampling: must be one of 'with_replacement', 'shuffle', 'sequential', got 'shufle' "
            f"(did you mean 'shuffle'?)"
        ],
        id="choice-sampling",
    ),
    case(
        spec("name: x\ntrain:\n  batch_size: fulll\n"),
        [
            f"{SPEC}:3: train.batch_size: must be a whole number or one of 'full', got 'fulll' "
            f"(did you mean 'full'?)"
        ],
        id="choice-batch-size-full",
    ),
    # --- sweeps --------------------------------------------------------------------------------
    case(
        spec("name: x\nsweep:\n  optimizer.lrr: [0.1, 0.2]\n"),
        [f"{SPEC}:3: sweep.optimizer.lrr: unknown key 'optimizer.lrr' (did you mean 'lr'?)"],
        id="sweep-unknown-key",
    ),
    case(
        spec("name: x\nsweep:\n  optimiser.lr: [0.1, 0.2]\n"),
        [f"{SPEC}:3: sweep.optimiser.lr: unknown key 'optimiser' (did you mean 'optimizer'?)"],
        id="sweep-unknown-section",
    ),
    case(
        spec("name: x\nsweep:\n  train.batch_size.x: [1, 2]\n"),
        [
            f"{SPEC}:3: sweep.train.batch_size.x: train.batch_size is a setting (a whole number or one of 'full'), "
            f"not a section, so it has no key 'x'"
        ],
        id="sweep-key-below-a-value",
    ),
    case(
        spec("name: x\nsweep:\n  optimizer.lr: []\n"),
        [f"{SPEC}:3: sweep.optimizer.lr: the list of values is empty; give at least one value"],
        id="sweep-empty-list",
    ),
    case(
        spec("name: x\nsweep:\n  optimizer.lr: [0.1, 0.2, 0.1]\n"),
        [f"{SPEC}:3: sweep.optimizer.lr: 0.1 is listed twice; each value gives one run"],
        id="sweep-duplicate-value",
    ),
    case(
        spec("name: x\nsweep:\n  train.seed: [1, 1.0]\n"),
        [f"{SPEC}:3: sweep.train.seed: 1.0 is listed twice; each value gives one run"],
        id="sweep-duplicate-number",
    ),
    case(
        spec("name: x\nsweep:\n  optimizer.lr: {a: 0.1}\n"),
        [
            f"{SPEC}:3: sweep.optimizer.lr: must be a list of values or a distribution ({{uniform: [a, b]}}, "
            f"{{loguniform: [a, b]}}, {{int: [a, b]}}, {{choice: [...]}}), got a mapping with the key a; to "
            f"sweep a whole section, list its versions, such as optimizer: [{{kind: sgd}}, {{kind: adam}}]"
        ],
        id="sweep-mapping-not-list",
    ),
    case(
        spec("name: x\nsweep:\n  optimizer.lr: 0.1\n"),
        [f"{SPEC}:3: sweep.optimizer.lr: must be a list of values, got 0.1; write [0.1] for a single value"],
        id="sweep-scalar-not-list",
    ),
    case(
        spec("name: x\nsweep: [optimizer.lr]\n"),
        [
            f"{SPEC}:2: sweep: must be a mapping of dotted keys to lists of values, such as "
            f"'train.batch_size: [1, full]', got a list"
        ],
        id="sweep-not-a-mapping",
    ),
    case(
        spec("name: x\nsweep:\n  name: [a, b]\n"),
        [f"{SPEC}:3: sweep.name: the experiment name cannot be swept; write one spec per name"],
        id="sweep-name",
    ),
    case(
        spec("name: x\nsweep:\n  optimizer.lr:\n    - 0.1\n    - -1\n  train.seed: [0, 1]\n"),
        [f"{SPEC}:5: optimizer.lr: must be > 0, got -1.0 (in runs lr=-1,seed=0, lr=-1,seed=1)"],
        id="sweep-bad-value-names-its-line",
    ),
    case(
        spec("name: x\nsweep:\n  optimizer:\n    - {kind: sgd}\n    - {kind: adamm}\n"),
        [
            f"{SPEC}:5: optimizer.kind: must be one of 'sgd', 'adam', 'adamw', got 'adamm' (did you mean 'adam'?) "
            f"(in run optimizer=adamm)"
        ],
        id="sweep-bad-choice",
    ),
    case(
        spec("name: x\nsweep:\n  description: ['a b', 'a_b']\n"),
        [
            f'{SPEC}:2: sweep: runs {{description: "a b"}} and {{description: "a_b"}} would both be written to the '
            f"folder 'description=a_b'; make the swept values distinct"
        ],
        id="sweep-same-folder",
    ),
    case(
        spec("name: x\nsweep:\n  description: [Big, big]\n"),
        [
            f'{SPEC}:2: sweep: runs {{description: "Big"}} and {{description: "big"}} would both be written to the '
            f"folder 'description=big' as 'description=Big' (names that differ only in case share a folder on "
            f"macOS and Windows); make the swept values distinct"
        ],
        id="sweep-same-folder-but-case",
    ),
    case(
        spec(
            "name: x\nsweep:\n  train.seed: [" + ", ".join(map(str, range(101))) + "]\n"
            "  optimizer.lr: [" + ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(100)) + "]\n"
        ),
        [
            f"{SPEC}:2: sweep: 10,100 runs is more than 10,000, which is likely a mistake; "
            f"pass --allow-large to run them all"
        ],
        id="sweep-too-large",
    ),
    # --- experiment names ----------------------------------------------------------------------
    case(spec("name: '..'\n"), [f"{SPEC}:1: name: '..' {NAME_RULE}"], id="name-dotdot"),
    case(spec("name: a/b\n"), [f"{SPEC}:1: name: 'a/b' {NAME_RULE}"], id="name-slash"),
    case(spec("name: /abs\n"), [f"{SPEC}:1: name: '/abs' {NAME_RULE}"], id="name-absolute"),
    case(spec("name: my run\n"), [f"{SPEC}:1: name: 'my run' {NAME_RULE}"], id="name-space"),
    case(spec("name: .hidden\n"), [f"{SPEC}:1: name: '.hidden' {NAME_RULE}"], id="name-leading-dot"),
    case(spec("name: 7\n"), [f"{SPEC}:1: name: must be a string, got 7 (a whole number)"], id="name-number"),
    case(
        spec("optimizer: {lr: 0.1}\n", "experiments/my run.yaml"),
        [
            f"experiments/my run.yaml (it has no 'name:', so the file name is used): name: 'my run' {NAME_RULE}"
        ],
        args=["experiments/my run.yaml"],
        id="name-from-file-name",
    ),
    case(
        spec("name: same\n", "a/one.yaml", {"b/two.yaml": "# the same name again\nname: same\n"}),
        [
            "b/two.yaml:2: name: the experiment name 'same' is already used by a/one.yaml:1; give each spec its own name"
        ],
        args=["a/one.yaml", "b/two.yaml"],
        id="name-used-twice",
    ),
    case(
        spec("name: lr\n", "a/one.yaml", {"b/two.yaml": "name: LR\n"}),
        [
            "b/two.yaml:1: name: the experiment name 'LR' is already used by a/one.yaml:1 as 'lr' (names that "
            "differ only in case share a folder on macOS and Windows); give each spec its own name"
        ],
        args=["a/one.yaml", "b/two.yaml"],
        id="name-used-twice-but-case",
    ),
    # --- data ----------------------------------------------------------------------------------
    case(
        spec("name: x\ndata:\n  kind: csv\n  path: nothere.csv\n  target: y\n"),
        [f"{SPEC}:4: data.path: no such file 'nothere.csv' (looked for experiments/nothere.csv)"],
        id="csv-missing",
    ),
    case(
        spec(
            "name: x\ndata: {kind: csv, path: d.csv, target: y}\n",
            SPEC,
            {"experiments/d.csv": "a,b,y\n1,2,5\n3,x,11\n"},
        ),
        [f"{SPEC}:2: data.path: d.csv:3: row 2, column 'b': 'x' is not a number"],
        id="csv-not-a-number",
    ),
    case(
        spec(
            "name: x\ndata: {kind: csv, path: d.csv, target: y}\n",
            SPEC,
            {"experiments/d.csv": "a,b,y\n1,2\n"},
        ),
        [f"{SPEC}:2: data.path: d.csv:2: row 1 has 2 cells, the header has 3"],
        id="csv-short-row",
    ),
    case(
        spec("name: x\ndata: {kind: csv, path: d.csv, target: y}\n", SPEC, {"experiments/d.csv": ""}),
        [f"{SPEC}:2: data.path: 'd.csv' is empty; it needs a header row and data rows"],
        id="csv-empty",
    ),
    case(
        spec("name: x\ndata:\n  kind: csv\n  path: d.csv\n  target: Y\n", SPEC, {"experiments/d.csv": CSV}),
        [f"{SPEC}:5: data.target: no column 'Y' in d.csv (did you mean 'y'?); its columns: a, b, y"],
        id="csv-missing-target",
    ),
    case(
        spec(
            "name: x\ndata:\n  kind: csv\n  path: d.csv\n  target: y\n  true_weights: [1, 2, 3]\n",
            SPEC,
            {"experiments/d.csv": CSV},
        ),
        [f"{SPEC}:6: data.true_weights: has 3 values but d.csv has 2 feature columns"],
        id="csv-true-weights-length",
    ),
    case(
        spec("name: x\ndata: {kind: csv, path: d.csv}\n", SPEC, {"experiments/d.csv": CSV}),
        [f"{SPEC}:2: data.target: is required"],
        id="csv-target-not-given",
    ),
    case(
        spec("name: x\ndata:\n  kind: synthetic\n  features: 3\n  weights: [1, 2]\n"),
        [f"{SPEC}:5: data.weights: has 2 values but data.features is 3; give one true weight per feature"],
        id="synthetic-weights-length",
    ),
    case(
        spec("name: x\nmodel:\n  kind: linear\n  init: [1, 2]\n"),
        [
            f"{SPEC}:4: model.init: has 2 values but the data has 4 features; give one initial weight per feature"
        ],
        id="model-init-length",
    ),
    # --- --set ---------------------------------------------------------------------------------
    case(
        spec(OK),
        ["--set optimizer.lr: expected KEY=VALUE, such as --set optimizer.lr=0.05"],
        args=[SPEC, "--set", "optimizer.lr"],
        id="set-no-equals",
    ),
    case(
        spec(OK),
        ["--set optimizer.lrr=0.1: unknown key 'optimizer.lrr' (did you mean 'lr'?)"],
        args=[SPEC, "--set", "optimizer.lrr=0.1"],
        id="set-unknown-key",
    ),
    case(
        spec(OK),
        ["--set optimiser.lr=0.1: unknown key 'optimiser' (did you mean 'optimizer'?)"],
        args=[SPEC, "--set", "optimiser.lr=0.1"],
        id="set-unknown-section",
    ),
    case(
        spec(OK),
        [
            "--set optimizer.lr=[1,: the value '[1,': YAML syntax error: expected the node content, "
            "but found '<stream end>'"
        ],
        args=[SPEC, "--set", "optimizer.lr=[1,"],
        id="set-unparsable",
    ),
    case(
        spec(OK),
        ["--set optimizer.lr=abc: optimizer.lr: must be a number, got 'abc' (a string)"],
        args=[SPEC, "--set", "optimizer.lr=abc"],
        id="set-wrong-type",
    ),
    case(
        spec(OK),
        [
            "--set train.batch_size.x=1: train.batch_size is a setting (a whole number or one of 'full'), "
            "not a section, so it has no key 'x'"
        ],
        args=[SPEC, "--set", "train.batch_size.x=1"],
        id="set-below-a-value",
    ),
    case(
        spec(OK),
        ["--set optimizer.lr=: no value after '='; to set an empty text, write optimizer.lr=\"\""],
        args=[SPEC, "--set", "optimizer.lr="],
        id="set-no-value",
    ),
    case(
        spec(OK),
        ["--set name=../up: name: '../up' " + NAME_RULE],
        args=[SPEC, "--set", "name=../up"],
        id="set-name-escapes",
    ),
    case(
        spec(OK),
        [
            f"--set description=!!python/object/apply:os.system [id]: the value "
            f"'!!python/object/apply:os.system [id]': the YAML tag !!python/object/apply:os.system is not "
            f"allowed; {PLAIN}"
        ],
        args=[SPEC, "--set", "description=!!python/object/apply:os.system [id]"],
        id="set-yaml-tag",
    ),
    case(
        spec("name: x\nsweep:\n  optimizer.lr: [0.1, 0.2]\n"),
        ["--set optimizer.lr=-1: optimizer.lr: must be > 0, got -1.0"],
        args=[SPEC, "--set", "optimizer.lr=-1"],
        id="set-pins-sweep-to-bad-value",
    ),
    case(
        spec("name: x\nsweep:\n  optimizer: [{kind: sgd}, {kind: adam}]\n"),
        [
            "--set optimizer.momentum=0.5: optimizer.momentum: unknown key 'momentum' for kind 'adam' "
            f"(only kind 'sgd' has it); {ADAM_SETTINGS} (in run optimizer=adam)"
        ],
        args=[SPEC, "--set", "optimizer.momentum=0.5"],
        id="set-wrong-for-one-swept-kind",
    ),
    case(
        spec("name: a\n", "a.yaml", {"b.yaml": "name: b\n"}),
        [
            "--set name=c: name: would give a.yaml and b.yaml the same experiment name 'c'; give one spec at a time "
            "a new name, or change the name in each file"
        ],
        args=["a.yaml", "b.yaml", "--set", "name=c"],
        id="set-one-name-for-two-specs",
    ),
    # --- several problems, several files -------------------------------------------------------
    case(
        spec("name: x\noptimizer: {lr: -1, momentum: 2}\ntrain: {steps: 0}\n"),
        [
            f"{SPEC}:2: optimizer.lr: must be > 0, got -1.0",
            f"{SPEC}:2: optimizer.momentum: must be < 1, got 2.0",
            f"{SPEC}:3: train.steps: must be >= 1, got 0",
        ],
        id="several-problems-one-file",
    ),
    case(
        spec(
            "name: a\noptimizer: {lr: -1}\n",
            "a.yaml",
            {"b.yaml": "name: b\nsweep:\n  optimiser.lr: [1]\n", "c.yaml": "name: c\n"},
        ),
        [
            "--set train.stepz=5: unknown key 'train.stepz' (did you mean 'steps'?)",
            "a.yaml:2: optimizer.lr: must be > 0, got -1.0",
            "b.yaml:3: sweep.optimiser.lr: unknown key 'optimiser' (did you mean 'optimizer'?)",
        ],
        args=["a.yaml", "b.yaml", "c.yaml", "--set", "train.stepz=5"],
        id="problems-in-several-files",
    ),
]


def write(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def run_main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("files, args, expected", CASES)
def test_bad_input_gives_one_message_each_and_writes_nothing(
    files, args, expected, tmp_path, monkeypatch, capsys
):
    write(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    status, out, err = run_main(["sweep", *args, "--logdir", "logs"], capsys)
    assert status == 2
    assert err.splitlines() == [f"error: {line}" for line in expected]
    assert out == ""
    assert not (tmp_path / "logs").exists()
    assert not (tmp_path / "hacked").exists()


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize(
    "files, args, expected",
    [
        c
        for c in CASES
        if c.id
        in {
            "unknown-nested",
            "yaml-tag-python-object",
            "set-unknown-key",
            "csv-not-a-number",
            "range-lr-negative",
            "sweep-unknown-section",
        }
    ],
)
def test_check_and_run_report_the_same_way(command, files, args, expected, tmp_path, monkeypatch, capsys):
    write(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    extra = [] if command == "check" else ["--logdir", "logs"]
    status, out, err = run_main([command, *args, *extra], capsys)
    assert (status, out) == (2, "")
    assert err.splitlines() == [f"error: {line}" for line in expected]
    assert not (tmp_path / "logs").exists()


def test_device_cuda_without_a_gpu(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    write(tmp_path, spec("name: x\ntrain:\n  device: cuda\n"))
    monkeypatch.chdir(tmp_path)
    status, _, err = run_main(["sweep", SPEC, "--logdir", "logs"], capsys)
    assert status == 2
    assert err.startswith(f"error: {SPEC}:3: train.device: 'cuda' was asked for (run x/base) but torch ")
    assert not (tmp_path / "logs").exists()


def test_run_refuses_a_spec_of_several_runs(tmp_path, monkeypatch, capsys):
    write(tmp_path, spec("name: x\nsweep:\n  train.seed: [0, 1]\n"))
    monkeypatch.chdir(tmp_path)
    status, _, err = run_main(["run", SPEC, "--logdir", "logs"], capsys)
    assert status == 2
    assert err == (
        f"error: {SPEC}: sweeps 2 runs; 'run' runs one. Pin the swept keys (train.seed) with "
        f"--set KEY=VALUE, or use 'sweep'\n"
    )
    assert not (tmp_path / "logs").exists()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"/" for p in sorted(folder.rglob("*"))
    }


def test_an_existing_log_folder_is_left_as_it_was(tmp_path, monkeypatch, capsys):
    logs = tmp_path / "logs"
    (logs / "x" / "base").mkdir(parents=True)
    (logs / "x" / "base" / "record.json").write_text('{"status": "complete"}\n')
    before = snapshot(logs)
    write(tmp_path, spec("name: x\nsweep:\n  optimizer.lr: [0.1, -1]\n"))
    monkeypatch.chdir(tmp_path)
    status, _, err = run_main(["sweep", SPEC, "--logdir", "logs"], capsys)
    assert status == 2 and "optimizer.lr: must be > 0, got -1.0 (in run lr=-1)" in err
    assert snapshot(logs) == before


def test_dry_run_writes_nothing_for_valid_specs(tmp_path, monkeypatch, capsys):
    specs = sorted(str(p) for p in (REPO / "experiments").glob("*.yaml"))
    assert specs
    monkeypatch.chdir(tmp_path)
    status, out, err = run_main(["sweep", *specs, "--logdir", "logs", "--dry-run"], capsys)
    assert (status, err) == (0, "")
    count = len(plan(specs))
    assert out.splitlines()[-1] == f"{count} runs planned into logs/ (dry run: nothing was written)"
    assert list(tmp_path.iterdir()) == []


def test_a_large_sweep_is_planned_with_allow_large(tmp_path, monkeypatch, capsys):
    write(
        tmp_path,
        spec(
            "name: x\nsweep:\n  train.seed: [" + ", ".join(map(str, range(73))) + "]\n"
            "  optimizer.lr: [" + ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(137)) + "]\n"
        ),
    )
    monkeypatch.chdir(tmp_path)
    status, _, err = run_main(["sweep", SPEC, "--logdir", "logs", "--dry-run"], capsys)
    assert status == 2
    assert err == (
        f"error: {SPEC}:2: sweep: 10,001 runs is more than 10,000, which is likely a mistake; "
        f"pass --allow-large to run them all\n"
    )
    status, out, err = run_main(["sweep", SPEC, "--logdir", "logs", "--dry-run", "--allow-large"], capsys)
    assert (status, err) == (0, "")
    assert out.splitlines()[-1] == "10001 runs planned into logs/ (dry run: nothing was written)"
    assert not (tmp_path / "logs").exists()


# --- the values that reach the runs --------------------------------------------------------------


def test_set_refines_a_swept_section_instead_of_being_lost(write_spec):
    path = write_spec(
        "opt",
        """
        name: opt
        sweep:
          optimizer: [{kind: adam, lr: 0.003}, {kind: sgd, lr: 0.01, momentum: 0.9}]
    """,
    )
    runs = plan([path], ["optimizer.lr=0.5"])
    assert [(type(r.config.optimizer).__name__, r.config.optimizer.lr) for r in runs] == [
        ("AdamOptimizer", 0.5),
        ("SgdOptimizer", 0.5),
    ]
    assert runs[1].config.optimizer.momentum == 0.9


def test_a_deeper_sweep_key_refines_a_swept_section_whatever_the_order(write_spec):
    path = write_spec(
        "order",
        """
        name: order
        sweep:
          optimizer.lr: [0.5, 0.25]
          optimizer: [{kind: sgd, lr: 0.1}]
    """,
    )
    assert [r.config.optimizer.lr for r in plan([path])] == [0.5, 0.25]


def test_numbers_with_an_exponent_and_dates_read_as_meant(write_spec):
    path = write_spec(
        "plain",
        """
        name: plain
        description: 2024-01-02
        optimizer: {lr: 1e-3}
    """,
    )
    (run,) = plan([path])
    assert (run.config.optimizer.lr, run.config.description) == (0.001, "2024-01-02")


# --- end to end, through a fresh interpreter -----------------------------------------------------


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_end_to_end_object_tags_run_nothing_and_all_files_are_reported(tmp_path):
    write(
        tmp_path,
        {
            "a.yaml": 'name: a\ndescription: !!python/object/apply:os.system ["touch hacked"]\n',
            "b.yaml": "name: b\noptimizer:\n  kind: sgdd\n",
            "c.yaml": "name: c\n",
        },
    )
    result = cli(tmp_path, "sweep", "a.yaml", "b.yaml", "c.yaml", "--logdir", "logs", "--workers", "1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: a.yaml:2: the YAML tag !!python/object/apply:os.system is not allowed; {PLAIN}",
        "error: b.yaml:3: optimizer.kind: must be one of 'sgd', 'adam', 'adamw', got 'sgdd' (did you mean 'sgd'?)",
    ]
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml", "c.yaml"]


def test_end_to_end_set_and_csv_problems(tmp_path):
    write(
        tmp_path,
        {"exp/d.yaml": "name: d\ndata:\n  kind: csv\n  path: d.csv\n  target: yy\n", "exp/d.csv": CSV},
    )
    result = cli(tmp_path, "sweep", "exp/d.yaml", "--logdir", "logs", "--set", "optimizer.lr=[1,")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --set optimizer.lr=[1,: the value '[1,': YAML syntax error: expected the node content, "
        "but found '<stream end>'",
        "error: exp/d.yaml:5: data.target: no column 'yy' in d.csv (did you mean 'y'?); its columns: a, b, y",
    ]
    assert not (tmp_path / "logs").exists()


def test_a_spec_that_is_a_dangling_symlink_is_named_as_one(tmp_path, monkeypatch, capsys):
    (tmp_path / "dangling.yaml").symlink_to("nowhere.yaml")
    monkeypatch.chdir(tmp_path)
    status, out, err = run_main(["check", "dangling.yaml"], capsys)
    assert (status, out) == (2, "")
    assert err == "error: dangling.yaml: a symlink to nowhere.yaml, which does not exist\n"
