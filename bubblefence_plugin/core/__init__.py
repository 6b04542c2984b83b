"""The algorithm on arrays: embeddings in, a split out. Never imports FiftyOne.

One module per concept, in the order a round uses them: `config` (the knobs),
`neighbors` (blockwise similarity search), `dedup`, `twins` (the near-twin graph),
`density` (LID), `anchors` (Sobol anchors snapped to samples), `bubbles` (the bubble
table and its shells), `boundary` (where a bubble's edge may cut), `regions` and
`labels`/`groups` (what eval must cover or keep whole), `grow` (growing bubbles to
the quota), `follow` (later rounds), `pipeline` (one round, start to end), `state`
(what persists). Beside the split: `metrics` (leakage, coverage, stability),
`curation` (typicality, diverse subsets) and `layout` (the 2-D map).
"""
