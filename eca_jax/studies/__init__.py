"""The paper's experiments with one command: Table 2 and Figure 4 as studies of the trainer.

    python -m eca_jax.studies.cost --model resnet50          # every row's exact cost
    python -m eca_jax.studies.run --study table2 --config experiments/configs/digits.py \\
        --seeds 0,1,2 --workdir studies/table2               # train every row x seed, tabulate

Modules: :mod:`~eca_jax.studies.paper` (the paper's figures, copied), :mod:`~.plan` (which rows,
which workdirs), :mod:`~.cost` and :mod:`~.throughput` (parameters, MACs, img/s),
:mod:`~.results` (tables), :mod:`~.plot` (the PNG), :mod:`~.run` (the runner).
Rows and their names: :mod:`eca_jax.nn.rows`.
"""
