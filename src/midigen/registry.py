"""The pipeline's variants by name, and the `memory` each one's config names: the registry the
rest of midigen reads, outside midigen.models so that the report reads it without model code."""

LSTM = "lstm"  # the LSTM baseline's `memory`: its (h, c), carried across segments
# variant -> the `memory` of its config: a transformer's (transformer.MEMORY_KINDS), or the
# LSTM's. Adding a variant is adding a line here (and to params.schema.yaml).
VARIANTS: dict[str, str] = {"vanilla": "none", "xl": "xl", "xl_knn": "xl_knn", "lstm": LSTM}
REFERENCE = "vanilla"  # the variant every other is compared with
