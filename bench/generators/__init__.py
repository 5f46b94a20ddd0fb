"""Data generators the Dhaka project did not design, written from their published descriptions.

They import nothing from :mod:`dhaka` (in particular not :mod:`dhaka.simulate`), so a method
tuned on the project's own simulators is judged here on data whose assumptions it never saw.

* :mod:`bench.generators.splatter` -- the Splatter model of single-cell counts (Zappia, Phipson &
  Oshlack, Genome Biology 2017), groups simulation.
* :mod:`bench.generators.cnv_tree` -- copy-number profiles of tumour cells on a clone tree with
  chromosome-arm and focal events and whole-genome doubling, after the CNAsim model (Weiner &
  Bansal, Bioinformatics 2023).
"""
