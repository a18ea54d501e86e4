"""benchmarks/RELIABILITY.md from the outcomes the reliability tests measure.

The fault-injection, fuzzing, security and live tests append each measured outcome as one JSON line to
``$EVPIPE_RELIABILITY_OUT`` (``tests/live_support.record``). This tool collects those lines with the run's
context (commit, load average, CPUs, time) into one JSON file and renders the Markdown from it: one row
per fault, bad-input class, security check, live run and pinned dv-processing behaviour, each with what
is expected and what was measured. An expected entry that no test recorded is listed as not measured.

    EVPIPE_RELIABILITY_OUT=/tmp/reliability.jsonl pytest tests/test_fault_injection.py tests/test_live_*.py \\
        tests/test_fuzz_readers.py tests/test_wire.py tests/test_multihost.py tests/test_runtime_graphs.py
    python -m evpipe.tools.reliability_report /tmp/reliability.jsonl

writes benchmarks/reliability.json and benchmarks/RELIABILITY.md; ``--render-only`` re-renders the
Markdown from an existing JSON file. A test that records twice (in several JSON-lines files, or re-run)
keeps its last outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FUZZ_FORMATS = ("aedat4", "hdf5", "hdf5-dsec", "rpg-text", "npy", "npz", "evt2", "evt3", "event-stream")


def collect(lines_files: list[Path]) -> dict:
    """Every recorded outcome (test name -> outcome dict) with the context of the run that measured it."""
    results: dict[str, dict] = {}
    for path in lines_files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                name = entry.pop("test")
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise SystemExit(f"{path}:{number}: not an outcome recorded by tests.live_support.record "
                                 f"({exc})") from None
            results[name] = entry
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return {"commit": commit.stdout.strip(), "collected_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
            "results": dict(sorted(results.items()))}


# -- one row per outcome: (what, expected, measured) -----------------------------------------------------------

def _lost(edges: list[dict], touching: str | None = None, other: bool = False) -> int:
    """Messages lost on the edges that touch node ``touching`` (or, with ``other``, on all the rest)."""
    total = 0
    for edge in edges:
        ends = {side.split(".")[0] for side in edge["edge"].split("->")}
        if touching is None or (touching in ends) != other:
            total += edge["lost"] or 0
    return total


def _kill9(victim: str, kind: str) -> Callable[[dict], tuple[str, str, str]]:
    def row(r: dict) -> tuple[str, str, str]:
        measured = (f"restarts {r['restarts']} (exit codes {r['exit_codes']}); messages lost on the victim's own "
                    f"edges {_lost(r['edges'], victim)}, on every other edge {_lost(r['edges'], victim, other=True)}"
                    f"; events sent by the DV server {r['events_sent_by_server']:,}, delivered to metrics "
                    f"{r['events_delivered_to_metrics']:,}")
        if victim == "fi_metrics":
            measured += " (the killed incarnation's tally died with it: this is the restarted one's)"
        if "events_missed_during_restart" in r:
            measured += f" (missed while the source was down: {r['events_missed_during_restart']:,})"
        if "events_in_file_after_restart" in r:
            measured += f"; the restarted recorder's file reads back {r['events_in_file_after_restart']:,} events"
        expected = "restarted once; only what the dead process held is lost, counted; acquisition loses nothing"
        if victim == "fi_events":
            expected = "restarted once; reconnects; the stream's gap is bounded by the outage"
        return f"kill -9 of the {kind} mid-stream", expected, measured
    return row


def _stalled_consumer(r: dict) -> tuple[str, str, str]:
    buffer = r["buffer"]
    return ("stalled consumer (20 ms/packet on a lossless edge, stream at 8x)",
            "acquisition keeps reading; the source's bounded buffer drops the oldest and counts them",
            f"received {r['received']:,} of {r['events_sent']:,} events sent; emitted {r['emitted']:,} + dropped "
            f"(overflow, counted) {r['dropped_overflow']:,} = {r['emitted'] + r['dropped_overflow']:,}; buffer "
            f"peak {buffer['peak_bytes']:,} B of {buffer['limit_bytes']:,} B; edge lost {r['edge']['lost']}")


def _sink_stalled_client(r: dict) -> tuple[str, str, str]:
    return ("DV viewer connected to the DV sink that never reads", "the graph is never held back",
            f"graph completed with the viewer still connected; {r['packets_in']} packets in: written "
            f"{r['written']}, dropped (writer queue full, counted) {r['dropped_queue_full']}; peak writer queue "
            f"{r['peak_writer_queue']}; sink peak RSS {r['sink_peak_rss_mb']:.0f} MB (dv-processing buffers "
            "per client, unbounded)")


def _acquisition_starved(r: dict) -> tuple[str, str, str]:
    backlog = r["input_backlog"]
    return ("acquisition thread starved of CPU for 2 s (GIL held) while the DV server wrote 4000 packets",
            "the loss inside dv-processing (which nothing can count) is reported: backlog at the reader's limit",
            f"events sent {r['events_sent']:,}, received {r['events_received']:,}; backlog peak "
            f"{backlog['peak_packets']} packets, {backlog['bursts_at_reader_limit']} burst(s) at the reader's "
            f"{backlog['reader_limit']}-packet limit, warned")


def _reconnect(r: dict) -> str:
    link = r["link"]
    after = [d["reconnected_after_s"] for d in link["disconnects"] if d["reconnected_after_s"] is not None]
    return (f"{len(link['disconnects'])} disconnect(s) reported, {link['connects']} connects, "
            f"{link['failed_attempts']} failed attempts (backoff), reconnected after "
            f"{', '.join(f'{s:.2f} s' for s in after) or '-'}")


def _server_killed(r: dict) -> tuple[str, str, str]:
    return ("DV server killed -9 mid-stream, a new one 1 s later", "reported, reconnected with backoff",
            f"{_reconnect(r)}; events received {r['events_received']:,} (second server sent "
            f"{r['second_server_sent']:,}, all of it received)")


def _server_restarted(r: dict) -> tuple[str, str, str]:
    return ("DV server ends, a new one starts 0.6 s later (UNIX socket)",
            "reported, reconnected with backoff, nothing lost",
            f"{_reconnect(r)}; events sent {r['events_sent']:,}, emitted {r['events_emitted']:,}")


def _disk_full(r: dict) -> tuple[str, str, str]:
    rec, edge = r["recorder"], r["edge"]
    return ("recorder's disk full (RLIMIT_FSIZE 2 MB)",
            "failure reported, every message accounted for, the file readable up to the fault",
            f"recorder restarts {rec['restarts']} (exit codes {rec['exit_codes']}); edge sent {edge['sent']} = "
            f"processed {edge['processed']} + lost {edge['lost']}; file reads back "
            f"{r['events_readable_in_file']:,} events in time order; graph exit {r['graph_exit']}")


def _corrupt_packet(r: dict) -> tuple[str, str, str]:
    issues = ", ".join(f"{k} {v}" for k, v in r["issues"].items())
    return ("corrupt packet in a recording (8 bytes flipped in an AEDAT4 event packet)",
            "damage counted and skipped (on_error: skip), the other streams complete",
            f"counted: {issues}; events delivered {r['events_delivered']:,}; frames delivered "
            f"{r['frames_delivered']} of 45")


def _fuzz_reader(fmt: str) -> Callable[[dict], tuple[str, str, str]]:
    def row(r: dict) -> tuple[str, str, str]:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        return (f"reader fuzzing: {fmt}", "a clean read or a RecordingError; no crash, no broken promise",
                f"{r['examples']} mutated files: {outcomes}")
    return row


def _wire_fuzz(what: str) -> Callable[[dict], tuple[str, str, str]]:
    def row(r: dict) -> tuple[str, str, str]:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        return f"wire decoder fuzzing: {what}", "decoded or WireError, nothing else", outcomes
    return row


def _wire_limits(r: dict) -> tuple[str, str, str]:
    return ("messages over each wire limit", "refused with WireError naming the limit, before allocation",
            "; ".join(f"{k}: \"{v}\"" for k, v in r["refused"].items()))


def _malformed(r: dict) -> tuple[str, str, str]:
    return ("malformed messages and a control flood into a running node",
            "rejected and counted, the node keeps running (control rate limited to 20/s)",
            f"rejected {r['rejected']} (4 malformed + the flood beyond the rate limit), processed {r['processed']}, "
            f"node exit {r['node_exit']}")


def _multihost(where: str) -> Callable[[dict], tuple[str, str, str]]:
    def row(r: dict) -> tuple[str, str, str]:
        tried = ", ".join(f"{k} {v}" for k, v in r["rogue_messages_tried"].items())
        offset = r["clock_offset_ms"]
        return (f"two hosts over CURVE ({where}); rogue clients with a wrong key and in plaintext",
                "graph data crosses intact; wrong key and plaintext refused",
                f"{r['messages_crossed']} messages crossed, events {r['events_delivered']:,} of "
                f"{r['events_produced']:,}, checksums equal: {r['checksums'][0] == r['checksums'][1]}; rogue "
                f"messages tried ({tried}), streams of them reaching the graph: "
                f"{len(r['rogue_streams_reaching_the_graph'])}; clock offset {offset['offset_ms']:.3f} ms "
                f"(round trip {offset['round_trip_ms']:.3f} ms)")
    return row


def _latency(r: dict) -> str:
    paths = r["latency"]["paths"]
    parts = [f"{path}: p50 {s['p50']:.0f} / p99 {s['p99']:.0f} ms (n={s['count']})" for path, s in paths.items()
             if s.get("count")]
    pred = r["latency"]["nodes"].get("pred", {})
    if pred.get("compute", {}).get("count"):
        parts.append(f"predictor queueing p50 {pred['queue']['p50']:.0f} ms, compute p50 "
                     f"{pred['compute']['p50']:.0f} ms")
    return "; ".join(parts)


def _live(title: str) -> Callable[[dict], tuple[str, str, str]]:
    def row(r: dict) -> tuple[str, str, str]:
        vox, edge, pred = r["voxelizer"], r["model_edge"], r["predictor"]
        dropped = sum(r["source_dropped"].values())
        measured = (f"{r['server_wall_s']:.1f} s at {r['speed']:g}x: events sent {r['events_sent']:,}, received "
                    f"{r['events_received']:,}, delivered {r['events_delivered']:,} (source drops {dropped}; "
                    f"acquisition backlog peak {r['input_backlog']['peak_packets']} packets); frames "
                    f"{r['frames_sent']}; voxel windows emitted {vox['windows']} + skipped late "
                    f"{vox['windows_skipped_late']} + cut at end {vox['cut_at_end']}; `latest` edge sent "
                    f"{edge['sent']} = processed {edge['processed']} + dropped {edge['dropped']}; predictor: "
                    f"predicted {pred['predictions']}, unanchored {pred['unanchored']}, waiting at end "
                    f"{r['predictor_windows_waiting_at_end']}. Latency (load-dependent): {_latency(r)}")
        return title, "zero unexplained loss: every ledger balances; a latency report", measured
    return row


def _sink_to_client(r: dict) -> tuple[str, str, str]:
    return ("graph -> DV sink -> a DV client", "every event served and received",
            f"served {r['events_served']:,}, received by the client {r['events_received_by_client']:,}; "
            f"{r['write_us_per_event']:.3f} µs/event to write; sink peak RSS {r['sink_peak_rss_mb']:.0f} MB")


def _dv_behaviour(r: dict) -> tuple[str, str, str]:
    rest = {k: v for k, v in r.items() if k != "dv_behaviour"}
    return r["dv_behaviour"], "pinned: evpipe works around it", ", ".join(f"{k} {v}" for k, v in rest.items())


SECTIONS: list[tuple[str, str, dict[str, Callable[[dict], tuple[str, str, str]]]]] = [
    ("Faults", "tests/test_fault_injection.py, tests/test_live_network.py", {
        **{f"kill9_{victim}": _kill9(victim, kind) for victim, kind in
           [("fi_events", "DV network source"), ("fi_vox", "voxelizer (transform)"),
            ("fi_metrics", "metrics sink"), ("fi_rec", "AEDAT4 recorder")]},
        "stalled_consumer": _stalled_consumer,
        "acquisition_starved": _acquisition_starved,
        "sink_stalled_client": _sink_stalled_client,
        "server_killed": _server_killed,
        "server_restarted_cleanly": _server_restarted,
        "disk_full": _disk_full,
        "corrupt_packet": _corrupt_packet,
    }),
    ("Bad input", "tests/test_wire.py, tests/test_runtime_graphs.py, tests/test_fuzz_readers.py", {
        "wire_fuzz_garbage": _wire_fuzz("random frames"),
        "wire_fuzz_headers": _wire_fuzz("mutated header fields"),
        "wire_limits": _wire_limits,
        "malformed_and_flood": _malformed,
        **{f"fuzz_{fmt}": _fuzz_reader(fmt) for fmt in FUZZ_FORMATS},
    }),
    ("Multi-host security (CURVE)", "tests/test_multihost.py", {
        "multihost_curve_namespaces": _multihost("network namespaces joined by veth"),
        "multihost_curve_loopback": _multihost("loopback addresses"),
    }),
    ("Live runs", "tests/test_live_graph.py, tests/test_live_network.py", {
        "live_real_rate_30s": _live("DV NetworkWriter -> network source -> voxelizer -> predictor -> metrics, "
                                    "30 s at the recording's real rate"),
        "live_4x_rate": _live("the same at 4x the rate (the predictor cannot keep up)"),
        "sink_to_dv_client": _sink_to_client,
    }),
    ("dv-processing 2.0.4 behaviours evpipe works around", "tests/test_live_dv_hazards.py", {
        name: _dv_behaviour for name in ("dv_reader_queue", "dv_writer_queue", "dv_writer_destructor",
                                          "dv_plain_reader_on_tls")
    }),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(collected: dict) -> str:
    """The Markdown report: a table per section; expected entries without a recorded outcome say so."""
    results = collected["results"]
    load = ", ".join(f"{x:g}" for x in collected["load_average_1_5_15"])
    lines = [
        "# Reliability: faults, bad input, security, live runs",
        "",
        "Generated by `python -m evpipe.tools.reliability_report` from benchmarks/reliability.json, the outcomes "
        "the tests measured and recorded (`EVPIPE_RELIABILITY_OUT`); do not edit by hand. Every number below is "
        "from that run: commit "
        f"{collected['commit']}, collected {collected['collected_utc']} UTC, {collected['cpus']} CPUs, load "
        f"average {load} at collection (the machine was shared with other jobs while the tests ran).",
        "",
    ]
    known: set[str] = set()
    for title, where, rows in SECTIONS:
        lines += [f"## {title}", "", f"Tests: {where}.", "", "| case | expected | measured |", "|---|---|---|"]
        for name, row in rows.items():
            known.add(name)
            if name in results:
                cells = row(results[name])
            else:
                cells = (name, "", "**not measured in this run**")
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    others = sorted(set(results) - known)
    if others:
        lines += ["## Other recorded outcomes", "", "| test | outcome |", "|---|---|"]
        lines += [f"| {name} | {_cell(json.dumps(results[name]))} |" for name in others]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lines", nargs="*", type=Path, help="JSON-lines files written through EVPIPE_RELIABILITY_OUT")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "reliability.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "benchmarks" / "RELIABILITY.md")
    parser.add_argument("--render-only", action="store_true", help="re-render the Markdown from --json")
    args = parser.parse_args(argv)
    if args.render_only:
        if not args.json.is_file():
            parser.error(f"--render-only: {args.json} does not exist")
        collected = json.loads(args.json.read_text())
    else:
        if not args.lines:
            parser.error("give the JSON-lines files to collect (or --render-only)")
        for path in args.lines:
            if not path.is_file():
                parser.error(f"{path} does not exist")
        collected = collect(args.lines)
        args.json.write_text(json.dumps(collected, indent=1) + "\n")
    args.markdown.write_text(render(collected))
    missing = [name for _, _, rows in SECTIONS for name in rows if name not in collected["results"]]
    print(f"{args.markdown}: {len(collected['results'])} outcomes; not measured: {', '.join(missing) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
