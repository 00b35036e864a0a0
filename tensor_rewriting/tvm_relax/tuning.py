"""MetaSchedule tuning: in-process builder and runner for CPU candidates, the tuning database (whether it can be
written, which kernels have a measured record, records reused at another bucket length), and tune() itself."""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import re
import subprocess
import sys

import tvm
import tvm_ffi
from tvm import relax, s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder.local_builder import default_export
from tvm.s_tir.meta_schedule.runner.local_runner import (LocalRunnerFuture, default_alloc_argument,
                                                         default_run_evaluator)


JSON_DATABASE_BROKEN = (f"MetaSchedule cannot write its tuning database here: tvm.ir.save_json segfaults with "
                        f"apache-tvm-ffi {tvm_ffi.__version__} under apache-tvm {tvm.__version__}; "
                        "pip install apache-tvm-ffi==0.1.14.post0 (the version TVM 0.27 works with) for --mode ansor")


@functools.cache
def json_database_works() -> bool:
    """Serialise one TIR node in a child process: a mismatched tvm-ffi build segfaults in ToJSONGraph."""
    probe = "import tvm; tvm.ir.save_json(tvm.tirx.IntImm('int32', 1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@functools.cache
def import_tensor_intrinsics():
    """Import tvm.s_tir.tensor_intrin (MetaSchedule's TuneContext and dlight's GPU matmul import it) in seconds,
    not minutes. It parses ~250 TVMScript intrinsics, and TVMScript's prim_func calls inspect.stack() for each;
    for every frame whose file is not on disk (<frozen importlib._bootstrap>, <ast>) inspect.getmodule scans all
    of sys.modules (3,600 with torch and transformers loaded) and finds nothing: ~30,000 scans, which are nearly
    all of the import's time. For a frame in such a pseudo-file the scan can only end in None (no module's file is
    "<ast>", and a frame has no __module__), so that is answered at once."""
    scan = inspect.getmodule

    def getmodule(obj, _filename=None):
        if inspect.isframe(obj) and _filename and _filename.startswith("<") and _filename.endswith(">"):
            return None
        return scan(obj, _filename)

    inspect.getmodule = getmodule
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.getmodule = scan


@derived_object
class InProcessBuilder(ms.builder.PyBuilder):
    """Builds candidates in this process. MetaSchedule's LocalBuilder starts worker processes, and each one
    imports tvm and tvm.s_tir.tensor_intrin. That import parses hundreds of TVMScript intrinsics and can outlast
    LocalBuilder's 30 s build timeout on a small or loaded CPU; then every candidate fails and tuning records
    nothing. LLVM schedules never tensorize with those intrinsics."""

    def build(self, build_inputs):
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        results = []
        for b in build_inputs:
            try:
                lib = tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(b.mod), target=b.target)
                results.append(ms.builder.BuilderResult(default_export(lib), None))
            except Exception as e:  # a bad candidate is a failed trial, not a failed run
                results.append(ms.builder.BuilderResult(None, f"{type(e).__name__}: {e}"))
        return results


@derived_object
class InProcessRunner(ms.runner.PyRunner):
    """Times candidates in this process with MetaSchedule's own evaluator (no worker process start-up)."""

    def run(self, runner_inputs):
        config = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
        futures = []
        for r in runner_inputs:
            try:
                device = tvm.runtime.device(r.device_type, 0)
                args = default_alloc_argument(device, [a.as_json() for a in r.args_info], 1)
                costs = default_run_evaluator(tvm.runtime.load_module(r.artifact_path), device, config, args)
                futures.append(LocalRunnerFuture(costs, None))
            except Exception as e:
                futures.append(LocalRunnerFuture(None, f"{type(e).__name__}: {e}"))
        return futures


def has_record(database: ms.Database, task) -> bool:
    """A measured record, not only failed candidates (those are stored with a 1e10 s run time)."""
    if not database.has_workload(task.dispatched[0]):
        return False
    best = database.get_top_k(database.commit_workload(task.dispatched[0]), 1)
    return bool(best) and bool(best[0].run_secs) and float(best[0].run_secs[0]) < 1e9


@contextlib.contextmanager
def interrupt_leaves_no_empty_database(work_dir: str):
    """Ctrl-C during tuning: remove the database files MetaSchedule created but never wrote a record to (an empty
    file would read as a broken database next time), keep the records tuned so far, and say so."""
    before = set(os.listdir(work_dir))
    try:
        yield
    except KeyboardInterrupt:
        for name in set(os.listdir(work_dir)) - before:
            path = os.path.join(work_dir, name)
            if os.path.isfile(path) and os.path.getsize(path) == 0:
                os.remove(path)
        raise KeyboardInterrupt(f"tuning stopped; records tuned so far kept in {work_dir}") from None


@contextlib.contextmanager
def foreign_log_handlers_set_aside():
    """Creating tune contexts runs MetaSchedule's logging.create_loggers, which hands its logger's current handlers
    by name to logging.config.dictConfig: a handler its own config did not create fails it (unnamed: an
    AttributeError on None.format; named: a ValueError). That config also makes the logger non-propagating, and
    pytest >= 9.2 attaches its unnamed capture handlers to every non-propagating logger at each test, so every
    tuning after a process's first failed under it. Such handlers are detached while MetaSchedule configures its
    loggers, then attached again."""
    logger = logging.getLogger(ms.__name__)  # "tvm.s_tir.meta_schedule", the name create_loggers configures
    own = {f"{logger.name}.console", f"{logger.name}.file"}
    foreign = [h for h in logger.handlers if h.get_name() not in own]
    for handler in foreign:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in foreign:
            logger.addHandler(handler)


def shape_free(mod: tvm.IRModule) -> str:
    """A kernel's TVMScript with its integer literals blanked: the same text for one kernel at two bucket
    lengths (and for two kernels that differ only in their sizes)."""
    return re.sub(r"\b\d+\b", "#", mod.script())


def transfer_records(database: ms.Database, tasks, target: tvm.target.Target) -> int:
    """Give tasks without a record the schedule of the same kernel at another size (another bucket).
    MetaSchedule looks records up by exact workload, shapes included, so every new bucket length was tuned from
    scratch. The 3 fastest records of each matching kernel are replayed on the new shape in turn: a trace whose
    tile sizes do not fit it fails to replay, and the next is tried. The first that replays is built and timed
    here and committed, with its own time, as the new workload's record. Returns how many tasks got one."""
    keys, measured = {}, {}
    for record in database.get_all_tuning_records():
        if record.run_secs and float(record.run_secs[0]) < 1e9:
            workload = tvm_ffi.structural_hash(record.workload.mod)
            if workload not in keys:
                keys[workload] = shape_free(record.workload.mod)
            measured.setdefault(keys[workload], []).append(record)
    cpu = target.kind.name == "llvm"
    builder = InProcessBuilder() if cpu else ms.builder.LocalBuilder()
    runner = InProcessRunner() if cpu else ms.runner.LocalRunner()
    transferred = 0
    for task in tasks:
        mod = task.dispatched[0]
        for record in sorted(measured.get(shape_free(mod), []), key=lambda r: float(r.run_secs[0]))[:3]:
            sch = s_tir.Schedule(mod)
            try:
                record.trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception:  # noqa: BLE001  a split or tile decision that does not fit this shape
                continue
            args = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
            (built,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
            if built.error_msg:
                continue
            (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu" if cpu else "cuda", args)])
            result = future.result()
            if result.error_msg or not result.run_secs:
                continue
            database.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, database.commit_workload(mod), result.run_secs, target, args))
            transferred += 1
            break
    return transferred


def tune(mod: tvm.IRModule, target: tvm.target.Target, trials: int, work_dir: str, ops: list[str] | None):
    """MetaSchedule over the fused kernels (those named like `ops`, all when None) that work_dir's database
    has no record for, after those given a record of the same kernel at another bucket length; then every
    kernel the database knows is applied. (module, task counts)."""
    import_tensor_intrinsics()  # before TuneContext imports it the slow way
    with target:
        mod = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                        relax.transform.CanonicalizeBindings(),
                                        relax.get_pipeline("zero")])(mod)  # legalize + fuse: the tasks
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target)
             if ops is None or any(op in t.task_name for op in ops)]
    database = ms.database.JSONDatabase(work_dir=work_dir)
    missing = [t for t in tasks if not has_record(database, t)]
    transferred = transfer_records(database, missing, target) if missing else 0
    todo = [t for t in missing if not has_record(database, t)]
    if todo:
        # A budget too small to fit a cost model on: replay random schedules rather than evolve a population.
        search = "evolutionary" if trials >= 64 else "replay-trace"
        with foreign_log_handlers_set_aside():
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(todo, work_dir,
                                                                                      strategy=search, seed=0)
        cpu = target.kind.name == "llvm"  # on a GPU box, MetaSchedule's own process-pool builder and runner
        with interrupt_leaves_no_empty_database(work_dir):
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=work_dir, database=database,
                max_trials_global=trials, max_trials_per_task=max(1, trials // len(todo)),
                num_trials_per_iter=min(64, max(1, trials // len(todo))),
                builder=InProcessBuilder() if cpu else "local", runner=InProcessRunner() if cpu else "local",
                cost_model="xgb" if search == "evolutionary" else "random")
    with target, database, tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    return mod, {"tasks": len(tasks), "tasks_tuned": len(todo), "tasks_from_database": len(tasks) - len(missing),
                 "tasks_transferred": transferred}
