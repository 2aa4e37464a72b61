r"""FDS against greedy, reverse-mode and black-box HPO at an equal budget.

    python -m benchmarks.hpo_table --task mnist1d_mlp        # T = 1000, 5 seeds
    python -m benchmarks.hpo_table --task mnist1d_large_mlp  # 20,000 signals
    python -m benchmarks.hpo_table --task fashion_mnist_mlp  # real images
    python -m benchmarks.hpo_table --task digits_mlp         # T = 500
    python -m benchmarks.hpo_table --task mnist1d_mlp \
        --val_objective calibrated_cross_entropy --tag _calibrated
    python -m benchmarks.hpo_table --task cifar10_wrn16_1 \
        --data_dir ~/tensorflow_datasets                # GPU: T = 10^4

The FDS rows' settings come from the launch config; ``--fds_init``,
``--fds_step_sizes`` and ``--fds_intervals`` (shared intervals per
hyperparameter, e.g. ``lr=20``) override them, and the table records them.

Methods (all learn lr, momentum and weight decay of SGD with momentum):

* ``default``: the task's plain schedule (lr 0.1, momentum 0.9, wd 5e-4);
  no search.
* ``default_cosine``, ``cosine_grid``: the reference schedules a
  practitioner starts from (:mod:`hypergrad.experiments.references`): a
  linear warm-up over 5% of the run to the usual lr, cosine decay to 0,
  the task's momentum and weight decay (no search); and the same with its
  peak lr the best of the usual lr times 1, 0.5, 2, 0.25, 4, 8 by final
  validation loss (6 runs, charged 6 T). With these rows in a table, every
  row's paired gain is also reported against the strongest reference row
  (``default``, ``default_cosine`` or ``cosine_grid``: the lowest mean
  validation loss, each scored on its seed's black-box split and
  initialisation; never chosen on test), in a section of its own; the
  table's columns are unchanged.
* ``fds``: the FDS outer loop (sign steps on forward-mode hypergradients
  through the whole horizon) with the task's launch config
  (``launch/configs/<task>.py``: 7 lr intervals, re-drawn validation split
  and fresh initialisation per outer step; its initial schedule and outer
  step sizes: for the standard MNIST-1D the default schedule with steps lr
  0.05, momentum 0.02, wd 3e-4, for the others the paper's init 0 with
  steps 0.1, 0.1, 3e-4); one inner run per outer step, forward mode.
* ``fds_pop``: FDS-population, the same loop where, from outer step
  ``POPULATION_FROM`` (5) on, each outer step's hypergradient is the median
  of ``POPULATION`` (4) inner runs, each with its own initialisation and
  validation split, a value whose members split 2-2 in sign left in place
  (``min_agreement`` 0.5); the earlier steps run one inner run. The
  hypergradients are computed by ``hypergrad.auto()`` (the same numbers as
  forward mode, by whichever of forward and checkpointed reverse mode is
  faster: on CPU reverse); each step is charged its measured cost.
* ``fds_zero``: the task's launch config with the FDS paper's initial
  values and outer steps from ``launch/configs/base.py`` (init 0, steps lr
  0.1, momentum 0.1, wd 3e-4), whatever the task's config says; one inner
  run per outer step, its hypergradients computed by ``hypergrad.auto()``
  (the same numbers as forward mode; on CPU checkpointed reverse mode, about
  a third of the cost), so the budget pays for as many outer steps as the
  search needs to converge (10 forward-mode steps did not settle from 0).
* ``reverse``: the same loop with reverse-mode hypergradients (the same
  numbers, another cost), optionally checkpointed.
* ``hd``, ``rtho``, ``truncated``: greedy online methods (hypergradient
  descent on the validation loss; RTHO every T/20 steps; truncated
  forward-mode look-ahead of T/10 steps) started from the default schedule,
  with sign meta-steps; their meta step is tuned over a grid (the run with
  the lowest final validation loss wins) as large as the budget pays for:
  ``floor(budget / cost of one run)`` scales, log-spaced over [0.03, 10]
  and tried coarse to fine, so a smaller budget has tried a coarser grid.
  The schedule they return is the per-step values they used (T intervals).
* ``random``, ``tpe``, ``hyperband``: optuna black-box searches
  (:mod:`hypergrad.experiments.blackbox`) over a constant (or, with
  ``--blackbox_lr_intervals``, piecewise) schedule, lr in [1e-3, 1] log,
  momentum in [0, 0.99], wd in [1e-5, 1e-2] log; objective: the validation
  loss at the end of the T-step run (FDS's objective).
* ``random_sched``, ``tpe_sched``, ``hyperband_sched``: the same searches
  over the very schedule FDS learns (its launch config's shared intervals:
  7 lr pieces, a momentum, a weight decay), each value in the registry's
  range above.
* ``random_param``, ``tpe_param``: random search and TPE over the
  parametric schedule practitioners tune: peak lr [1e-3, 1] log, linear
  warm-up fraction [0, 0.2], cosine or linear decay to a final fraction
  [0, 0.5] of the peak, momentum [0, 0.99], wd [1e-5, 1e-2] log
  (``blackbox.PARAMETRIC_SPACE``); a trial trains the whole horizon.

With ``--tune_greedy`` the greedy rows are given their best setting: the
meta step is tuned on search seed 1000 (none of the evaluated seeds) over
the grid one search's budget pays for; each evaluated seed then runs the
tuned meta step first and spends the rest of its budget on scales within
a factor 4 of it (the table says so, and names the tuned step).

Budget accounting (inner-step equivalents, "steps"): a plain training run of
T steps costs T. Before the runs, the wall time of one call of each
estimator over the horizon is measured against the plain unroll of the same
T steps on this machine (best of ``--cost_repeats`` after a warm-up,
compilation excluded): an FDS outer step then costs ``ratio_fwd * T``, a
greedy run ``ratio_method * T``, a black-box trial the steps it trained. The
default budget is 10 FDS outer steps; every method stops before it would
exceed it. Wall time (compilation included) is reported too.

Evaluation, the same for every method and paired: within HPO seed i, each
found schedule and the default schedule are retrained from scratch for T
steps on the loaded training split from the same ``--eval_seeds``
initialisations and tested; the table gives the mean and standard deviation
over independent HPO seeds of that test accuracy, and the mean paired gain
over the default with its 95% Student-t confidence interval. The curve
evaluates, at fractions of the budget, the schedule each method would have
returned had it stopped there.

The validation loss is every method's objective: the cross-entropy, or with
``--val_objective calibrated_cross_entropy`` the cross-entropy after the
best temperature on the validation split (for every method alike); the table
reports test accuracy and the plain test cross-entropy. Run time with the
defaults (5 seeds) on 2 shared CPU cores: digits ~4 min, MNIST-1D ~26 min
(the larger one too), Fashion-MNIST MLP ~87 min (a plain run of T = 1000
steps takes 0.18 s on MNIST-1D and 0.83 s on Fashion-MNIST; the wall time is
the ~100-150-run budget of every method times 5 seeds, then the retrains).

Writes ``benchmarks/results/hpo_<task>{--tag}.{md,png,json}``. With
``--merge --methods m1,m2`` only those methods run (and the default, to
check the pairing), at the existing table's budget, and their rows replace
the table's; the table notes the command that produced them.

A long table resumes. While it runs, every finished piece (the measured
costs, each search of a method and seed, each seed's retrains) is kept in
``<out_dir>/hpo_<task>{--tag}.partial/`` (``--journal_dir``); the same
command after a kill loads them and runs only the rest, and the journal is
removed once the table is written (``--restart`` discards one instead). A
journal made with other settings is refused, naming them. On a machine
whose cores one process does not keep busy (XLA on 2 CPU cores: 1.2 times
the speed of one), shards share the journal and the searches::

    taskset -c 0 python -m benchmarks.hpo_table ARGS --shard 0/2 &
    taskset -c 1 python -m benchmarks.hpo_table ARGS --shard 1/2
    python -m benchmarks.hpo_table ARGS      # writes the table

The costs are measured once, by the first shard while the others wait, so
every search is charged the same; each shard retrains the seeds it
completes.

Layout (``benchmarks/hpo/``): :mod:`~benchmarks.hpo.methods` holds one
:class:`~benchmarks.hpo.methods.Method` record per row (a new method is one
record there), :mod:`~benchmarks.hpo.searches` the three kinds of search,
:mod:`~benchmarks.hpo.costs` the cost measurement,
:mod:`~benchmarks.hpo.runner` the run (journal, shards, resume),
:mod:`~benchmarks.hpo.evaluation` the paired retrains,
:mod:`~benchmarks.hpo.report` and :mod:`~benchmarks.hpo.merge` the outputs,
:mod:`~benchmarks.hpo.cli` the flags.
"""

from benchmarks import journal as journal_lib
from benchmarks.hpo.costs import measure_costs
from benchmarks.hpo.evaluation import confidence_interval
from benchmarks.hpo.evaluation import eval_inits
from benchmarks.hpo.evaluation import evaluate
from benchmarks.hpo.evaluation import schedule_key
from benchmarks.hpo.merge import merge_results
from benchmarks.hpo.methods import BLACKBOX
from benchmarks.hpo.methods import GREEDY
from benchmarks.hpo.methods import LABELS
from benchmarks.hpo.methods import METHODS
from benchmarks.hpo.methods import NAMES
from benchmarks.hpo.methods import OUTER
from benchmarks.hpo.methods import Method
from benchmarks.hpo.report import paired_differences
from benchmarks.hpo.report import plot
from benchmarks.hpo.report import table
from benchmarks.hpo.report import write
from benchmarks.hpo.runner import run_table
from benchmarks.hpo.searches import POPULATION
from benchmarks.hpo.searches import POPULATION_FROM
from benchmarks.hpo.searches import coarse_to_fine
from benchmarks.hpo.searches import outer_spend
from benchmarks.hpo.settings import PRESETS
from benchmarks.hpo.settings import config_intervals
from benchmarks.hpo.settings import fds_config

__all__ = (
    'journal_lib',
    'measure_costs',
    'confidence_interval',
    'eval_inits',
    'evaluate',
    'schedule_key',
    'merge_results',
    'BLACKBOX',
    'GREEDY',
    'LABELS',
    'METHODS',
    'NAMES',
    'OUTER',
    'Method',
    'paired_differences',
    'plot',
    'table',
    'write',
    'run_table',
    'POPULATION',
    'POPULATION_FROM',
    'coarse_to_fine',
    'outer_spend',
    'PRESETS',
    'config_intervals',
    'fds_config',
)
