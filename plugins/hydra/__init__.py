"""Hydra (Levy et al., NeurIPS 2024) as a dcbench method: an adapter that runs the external
`drgnai` program of the Hydra repository on dcbench's data and reads its class posteriors back.

convert.py writes the inputs Hydra reads (2D particle stack, CTF pickle); program.py finds and
runs `drgnai`; method.py is the Method. See docs/hydra.md.
"""
