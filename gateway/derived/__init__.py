"""Derived points: values computed from other points by a checked formula (issue 13).

formula.py parses, unit-checks and compiles formulas (pure); builtins.py holds the cited equations.
"""
