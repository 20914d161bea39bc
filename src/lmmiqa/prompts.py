"""Prompts as named data (frozen by golden-file tests in ``tests/golden/``).

Sources: Q-Align (Wu et al. 2023) §6 of METHODS.md; LLM-IQA / Dog-IQA (Liu et al. 2024) standard-guided prompt,
METHODS §1. A change of wording here is a deliberate, reviewed diff: the golden test fails until updated.
"""

from __future__ import annotations

from lmmiqa.levels import LevelScale

QALIGN_QUESTION = "How would you rate the quality of this image?"
QALIGN_ANSWER_PREFIX = "The quality of the image is"

STANDARD_SYSTEM_TEMPLATE = (
    "You are a helpful assistant to evaluate image quality. You will be given standards for each quality level. "
    "The quality standard is listed as follows: {standards}. "
    "The higher the image quality is, the higher the score should be."
)
STANDARD_USER_TEMPLATE = "Please evaluate the quality of the image and score in [{levels}]."


def standard_system(scale: LevelScale) -> str:
    """System text listing ``K: word`` from the highest level down, as in the LLM-IQA paper."""
    pairs = [f"{tok}: {word}" for tok, word in zip(scale.tokens, scale.words)]
    return STANDARD_SYSTEM_TEMPLATE.format(standards=", ".join(reversed(pairs)))


def standard_user(scale: LevelScale) -> str:
    """User question listing the allowed digits in ascending order."""
    return STANDARD_USER_TEMPLATE.format(levels=", ".join(scale.tokens))


# LEAF teacher (METHODS §3.1): a two-image comparison asked in both orders; the answer is the next token after
# the prefix, " A" or " B" (single tokens in BPE vocabularies), read with ``backend.level_logprobs``.
LEAF_PAIR_LABEL_A = "Image A:"
LEAF_PAIR_LABEL_B = "Image B:"
LEAF_PAIR_QUESTION = "Compare the two images. Which one has better quality, image A or image B?"
LEAF_PAIR_ANSWER_PREFIX = "The image with better quality is image"
LEAF_PAIR_ANSWER_A = "A"
LEAF_PAIR_ANSWER_B = "B"

# IQARAG (METHODS §2.4): "Give you P images." (P = number of reference images), then per reference the image and
# "This image's quality is <level>." (the Q-Align word of its MOS bin), then the query image and the question;
# the answer continues "The quality of this image is" ("this", as in the IQARAG paper).
IQARAG_INTRO_TEMPLATE = "Give you {n} images."
IQARAG_REFERENCE_TEMPLATE = "This image's quality is {level}."
IQARAG_QUESTION = "How would you rate the quality of this image?"
IQARAG_ANSWER_PREFIX = "The quality of this image is"

# AgenticIQA (METHODS §5): planner -> executor (detection, analysis, tool selection) -> summarizer. Every JSON
# stage is parsed by lmmiqa.methods.agentic.parsing; on a parse failure the stage is asked again with
# AGENTIC_JSON_REMINDER. Braces are doubled where the text is a str.format template.
AGENTIC_SYSTEM = (
    "You are an expert in image quality assessment working as one stage of a quality assessment agent. "
    "When asked for JSON, reply with the JSON object only."
)
AGENTIC_DEFAULT_QUERY = "How would you rate the quality of this image?"
AGENTIC_IMAGE_LABEL = "Image to assess:"
AGENTIC_REFERENCE_LABEL = "Reference image (the undistorted original):"
AGENTIC_REFERENCE_PROVIDED = "provided"
AGENTIC_REFERENCE_NOT_PROVIDED = "not provided"
AGENTIC_PLANNER_TEMPLATE = (
    'You are the planner. User query: "{query}"\n'
    "A reference image is {reference}.\n"
    "Decide how to answer the query. Return only a JSON object with these keys:\n"
    '"query_type": "IQA" if the query is about image quality, else "other";\n'
    '"reference_mode": "full-reference" if a reference image is provided, else "no-reference";\n'
    '"objects": the objects or regions the query is about, or ["Global"] for the whole image;\n'
    '"distortions": the distortions the user names, using these categories where possible: {categories} '
    "(an empty list if the user names none);\n"
    '"plan": {{"distortion_detection": true or false, "distortion_analysis": true or false, '
    '"tool_selection": true or false, "tool_execution": true or false}}.\n'
    'Example: {{"query_type": "IQA", "reference_mode": "no-reference", "objects": ["Global"], "distortions": [], '
    '"plan": {{"distortion_detection": true, "distortion_analysis": true, "tool_selection": true, '
    '"tool_execution": true}}}}'
)
AGENTIC_REPLAN_TEMPLATE = (
    "Your previous plan {plan} gathered no usable evidence: {reason}. Plan again so that the image is inspected "
    "or measured (for example, enable tool_execution)."
)
AGENTIC_DETECTION_TEMPLATE = (
    "Inspect the image for distortions. Objects of interest: {objects}.{user_distortions}\n"
    "Distortion categories: {categories}.\n"
    "Return only a JSON object that maps each object of interest to the list of categories visible on it, e.g. "
    '{{"distortions": {{"Global": ["blur", "noise"]}}}}. Use an empty list for an object without distortion.'
)
AGENTIC_DETECTION_USER_TEMPLATE = " The user asks about: {distortions}."
AGENTIC_ANALYSIS_TEMPLATE = (
    "Analyse these distortions of the image: {targets}.\n"
    "For each one give its severity (one of: none, slight, moderate, severe, extreme) and a one-sentence "
    "explanation of what you see.\n"
    'Return only a JSON object: {{"analysis": [{{"object": "Global", "type": "blur", "severity": "moderate", '
    '"explanation": "Fine textures are smeared."}}]}}'
)
AGENTIC_SELECTION_TEMPLATE = (
    "Choose one tool to measure each of these distortions: {targets}.\n"
    "Available {kind} tools:\n{tools}\n"
    "Return only a JSON object that maps each distortion to the name of one tool from the list, e.g. "
    '{{"tools": {{"{example_target}": "{example_tool}"}}}}'
)
AGENTIC_SELECTION_OVERALL = "overall quality"
AGENTIC_EVIDENCE_DISTORTION_TEMPLATE = "- {type} on {object}: severity {severity}. {explanation}"
AGENTIC_EVIDENCE_DETECTED_TEMPLATE = "- distortions detected on {object}: {types}"
AGENTIC_EVIDENCE_CLEAN = "- no distortion was detected"
AGENTIC_EVIDENCE_TOOL_TEMPLATE = (
    "- {tool} ({kind}, {direction}): raw {raw}, normalized {normalized} on a 1-5 scale (5 = best)"
)
AGENTIC_EVIDENCE_NONE = "- no evidence: no distortion analysis or tool measurement is available"
AGENTIC_SUMMARY_TEMPLATE = (
    'User query: "{query}"\n'
    "Evidence gathered by the agent:\n{evidence}\n"
    "Considering the image and the evidence, how would you rate the quality of the image?\n"
    "A. Excellent\nB. Good\nC. Fair\nD. Poor\nE. Bad\n"
    "Answer with the letter of your choice."
)
AGENTIC_ANSWER_PREFIX = "Answer:"
AGENTIC_EXPLANATION_TEMPLATE = (
    'User query: "{query}"\n'
    "Evidence gathered by the agent:\n{evidence}\n"
    "Considering the image and the evidence, answer the user's query and explain the quality of the image in "
    "at most three sentences. Return only a JSON object: "
    '{{"explanation": "...", "level": "A, B, C, D or E (Excellent, Good, Fair, Poor, Bad)"}}'
)
AGENTIC_JSON_REMINDER = (
    "That reply could not be used ({error}). Return only the JSON object in the requested format, with no "
    "other text."
)
