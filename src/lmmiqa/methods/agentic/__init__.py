"""AgenticIQA (METHODS §5): planner → executor → summarizer over classical IQA tools.

The scorer is :class:`lmmiqa.methods.agentic.agent.AgenticIQA` (registered as ``agentic-iqa``, alias
``agentic``); the score fusion is in :mod:`lmmiqa.methods.agentic.fusion` (pure functions). Nothing heavy is
imported here.
"""
