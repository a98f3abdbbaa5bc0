"""The eight EXPR classes, in the order the challenge defines (index = label value)."""

CLASS_NAMES: tuple[str, ...] = (
    "Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other",
)
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_LABEL = -1
"""Label value of frames that are not annotated; excluded from training and scoring."""

ANNOTATION_HEADER = ",".join(CLASS_NAMES)
"""First line of every EXPR annotation file."""

SUBMISSION_HEADER = "image_location," + ANNOTATION_HEADER
"""First line of a challenge submission / prediction file."""
