"""The FiftyOne side: the core's results written to datasets, runs and fields.

Operators, panels and the CLI call these modules; the algorithm itself lives in
`bubblefence_plugin.core` and never sees a FiftyOne object.
"""
