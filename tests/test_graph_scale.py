"""The stage-1 and stage-2 graphs hold nothing proportional to the run on one worker: every side input
and every global combine is one of the bounded summaries listed here, each with why it is bounded.

The graphs are built, not run, from the same prepare() a user's command goes through, with CLIP and
semantic dedup on (their branches add the threshold side input and the k-means summaries), so a new step
that broadcasts or gathers data fails here."""

import shutil

import apache_beam as beam
from apache_beam.pipeline import PipelineVisitor

from filters.clip_score import save_random_model
from pipelines import stage1, stage2
from pipelines.semantic_dedup import DEFAULT_ITERATIONS
from synthetic.annotated_sets import make_stage2_sample
from synthetic.raw_corpus import make_sample

# a part of the consumer's full label -> why what reaches it is bounded. A side input inside a global
# combine (its default value) belongs to the combine, which is audited itself.
BOUNDED_SIDE_INPUTS = {
    "/WriteImpl/": "Beam's file sink: its initialisation result and the names of the shards written",
    "Decide": "per-source CLIP thresholds: one float per source",
    "BuildReport": "outcome counts per (source, reason), languages per source (<= 176 each), thresholds, score histograms, "
                   "the semantic dedup's cluster summary (three integers)",
    "SemanticCandidates": "per-source CLIP thresholds: one float per source",
    "SemanticDedup/KMeans/Seed": "one integer: the count of rows, which sets the default k",
    "SemanticDedup/KMeans/Lloyd[": "the centroids: k x D floats, k at most the k-means++ sample (MAX_SAMPLE rows)",
    "SemanticDedup/Assign/": "the final centroids: k x D floats, as above",
    "SemanticDedup/SubGroup": "the member count per cluster: k integers",
    "Dedup/Components/NodeRoots": "one integer: the nodes not settled after the last round",
    "ToGroup": "stage 2: the sample (or reject) count per task, at most 8",
    "ShardConversations": "sft-build: one integer, the count of conversations (sizes the shards)",
    "ShardTexts": "sft-build: the same integer",
}
BOUNDED_GLOBAL_COMBINES = {
    "ClipThresholds/AllQuantiles": "per source, 1001 quantile points",
    "Histograms/List": "per (source, score), a fixed number of bin counts: sources x 3 x 40",
    "CountOutcomes/List": "one count per (source, outcome): sources x reasons",
    "CountLanguages/List": "one count per (source, language): sources x 176",
    "Dedup/Components/CountUnsettled": "a sum: one integer",
    "List[": "one count per (task, source) or (task, reason)",
    "ListPacking": "one triple per task: at most 8",
    "NameCounts": "one count per task: at most 8",
    "CountConversations": "sft-build: one integer",
    "CountTexts": "sft-build: one integer",
    "SumModes": "sft-build: two integers per mode, at most 4 modes",
    "SemanticDedup/KMeans/CountRows": "a count: one integer",
    "SemanticDedup/KMeans/Sample": "a fixed-size sample: at most MAX_SAMPLE (200,000) embeddings, ~300 MB at 768 wide",
    "SemanticDedup/KMeans/Lloyd[": "one summed vector per cluster: k x D floats",
    "SemanticDedup/ClusterSizes": "one count per cluster: k integers",
}


class GraphAudit(PipelineVisitor):
    """Every side input (consumer, view, producer) and global combine of a built pipeline."""

    def __init__(self):
        self.side_inputs, self.global_combines = [], []

    def visit_transform(self, node):
        self._audit(node)

    def enter_composite_transform(self, node):
        self._audit(node)

    def _audit(self, node):
        for side in node.side_inputs:
            self.side_inputs.append((node.full_label, type(side).__name__, side.pvalue.producer.full_label))
        if isinstance(node.transform, beam.CombineGlobally):
            self.global_combines.append(node.full_label)


def audit(build) -> GraphAudit:
    p = beam.Pipeline("FnApiRunner")
    try:
        build(p)
        found = GraphAudit()
        p.visit(found)
    finally:
        shutil.rmtree(p.local_tempdir)  # made by Pipeline(), removed by run(): this one is never run
    return found


def unlisted(labels, allowed: dict) -> list[str]:
    return [label for label in labels if not any(part in label for part in allowed)]


def unlisted_side_inputs(found: GraphAudit) -> list[str]:
    consumers = [c for c, _, _ in found.side_inputs if not any(c.startswith(g + "/") for g in found.global_combines)]
    return unlisted(consumers, BOUNDED_SIDE_INPUTS)


def own_side_inputs(found: GraphAudit) -> list[tuple]:
    """The side inputs of the pipeline's own steps: not Beam's sink, not a combine's default."""
    return [s for s in found.side_inputs if "/WriteImpl/" not in s[0] and not any(s[0].startswith(g + "/") for g in found.global_combines)]


def stage1_graph(tmp_path):
    make_sample(str(tmp_path / "raw"), pairs=20, seed=0, shard_size=10)
    save_random_model(tmp_path / "clip")
    argv = ["--input", f"laion-en={tmp_path / 'raw'}", "--output", str(tmp_path / "out"), "--clip-model", f"local-dir:{tmp_path / 'clip'}",
            "--semdedup-eps", "0.05"]
    args, inputs, configs, settings, _ = stage1.prepare(argv)
    return audit(lambda p: stage1.build_pipeline(p, inputs, configs, args.output, settings))


def test_stage1_graph_has_only_bounded_side_inputs_and_global_combines(tmp_path):
    found = stage1_graph(tmp_path)
    assert unlisted_side_inputs(found) == []
    assert unlisted(found.global_combines, BOUNDED_GLOBAL_COMBINES) == []
    own = own_side_inputs(found)
    kmeans = 1 + 2 * DEFAULT_ITERATIONS + 2  # the seeding's count, two per Lloyd step, the assignment, the sub-groups
    assert [consumer.split("/")[0] for consumer, _, _ in own] == ["Dedup", "SemanticCandidates"] + ["SemanticDedup"] * kmeans + ["Decide"] + ["BuildReport"] * 5
    assert all(view == "AsSingleton" for _, view, _ in own)
    assert any(label.startswith("Dedup/Components/CountUnsettled") for label in found.global_combines)
    assert sum(label.startswith("SemanticDedup/KMeans/Lloyd[") for label in found.global_combines) == DEFAULT_ITERATIONS


def test_stage2_and_sft_graphs_have_only_bounded_side_inputs_and_global_combines(tmp_path):
    manifest = make_stage2_sample(str(tmp_path / "annotated"), seed=0, per_set=12)
    for chat, key in ((False, "stage2_args"), (True, "sft_args")):
        argv = [a.replace("OUTPUT", str(tmp_path / "annotated")) for a in manifest[key]] + ["--output", str(tmp_path / "out")]
        sources, output, settings, _ = stage2.prepare(argv, chat)
        found = audit(lambda p: stage2.build_pipeline(p, sources, output, settings, chat))
        assert unlisted_side_inputs(found) == []
        assert unlisted(found.global_combines, BOUNDED_GLOBAL_COMBINES) == []


def test_the_audit_catches_a_broadcast_and_a_gather():
    def build(p):
        rows = p | beam.Create([("a", 1), ("b", 2)])
        gathered = rows | "Everything" >> beam.combiners.ToList()
        p | "Start" >> beam.Create([None]) | "Join" >> beam.Map(lambda _, d: d, beam.pvalue.AsDict(rows))
        return gathered

    found = audit(build)
    assert unlisted_side_inputs(found) == ["Join"]
    assert own_side_inputs(found) == [("Join", "AsDict", "Create/Map(decode)")]
    assert unlisted(found.global_combines, BOUNDED_GLOBAL_COMBINES) == ["Everything/Everything"]


def test_sft_build_graph_has_only_bounded_side_inputs_and_global_combines(tmp_path):
    from pipelines import sft_build

    manifest = make_stage2_sample(str(tmp_path / "annotated"), seed=0, per_set=12)
    text = tmp_path / "dialogue.jsonl"
    text.write_text('{"conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello."}]}\n')
    names = ("vqa:vqav2", "caption:coco", "referring:refcoco")
    argv = [arg for name in names for arg in ("--source", manifest["sets"][name]["source"])]
    argv += [arg for name in names if manifest["sets"][name]["images"] for arg in ("--images", manifest["sets"][name]["images"])]
    sources, output, settings, _ = sft_build.prepare(argv + ["--text", str(text), "--output", str(tmp_path / "out")])
    found = audit(lambda p: sft_build.build_pipeline(p, sources, output, settings))
    assert unlisted_side_inputs(found) == []
    assert unlisted(found.global_combines, BOUNDED_GLOBAL_COMBINES) == []
    assert {c.split("/")[0] for c, _, _ in own_side_inputs(found)} == {"Buckets", "RejectGroups", "ShardConversations", "ShardTexts", "BuildReport"}
