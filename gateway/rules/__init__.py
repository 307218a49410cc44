"""Pure data-quality and missing-data rules (issue 4): no I/O, no clock, no hidden state.

Modules, each usable on its own:

- ``validity``      per-reading validity checks (range, physical limits, rate, frozen, NaN, calibration,
                    NAMUR NE 107 device health) carried by an explicit ``ValidityState``;
- ``gaps``          gap ledger: gap-open / gap-close events from readings in time order;
- ``hour_validity`` sub-hour samples to a valid hour (MRR 80 %, Part 75 quadrants);
- ``aggregates``    period averages with count, valid count, availability and validity;
- ``totalizer``     counter differences with rollover and meter replacement, recovered gaps;
- ``substitution``  missing-data substitutes as versioned records with a full trace
                    (``methods``: each substitution method declared once; ``policy_config``, ``selectors``,
                    ``policies``, ``lookback``, ``percentile``, ``trace``).

The package does no I/O: the auditor tool that reads scenario files (``carbon-gateway rules evaluate FILE``)
is ``gateway.audit``, and tests/unit/rules/test_rules_purity.py keeps it that way.

Standard clauses served: 10.1.3 f (conservative missing-data rule), 10.3.1 (raw data never changed),
10.3.3 (every estimate documents basis, process and result).
"""
