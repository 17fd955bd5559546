// Following a training run live over server-sent events (shared by the overview and models pages).

/** 0..1 from a run's progress dict ({epoch, epochs, step, steps}) and status. */
export function runFraction(run, progress = run.progress || {}) {
  if (run.status === "succeeded") return 1;
  const epochs = progress.epochs || 0;
  if (!epochs) return 0;
  const epoch = progress.epoch || 0;
  if (progress.val) return Math.min(1, epoch / epochs); // an epoch-end event
  const within = progress.steps ? (progress.step || 0) / progress.steps : 0;
  return Math.min(1, (Math.max(epoch - 1, 0) + within) / epochs);
}

export function describeProgress(run, progress = run.progress || {}) {
  if (["succeeded", "failed", "cancelled"].includes(run.status)) return run.status;
  const phase = progress.phase || run.status;
  if (phase === "training" && progress.epochs) {
    const eta = progress.eta_s ? ` · about ${Math.ceil(progress.eta_s)} s left` : "";
    return `training · epoch ${progress.epoch || 0}/${progress.epochs}${eta}`;
  }
  return phase;
}

/**
 * Follow a run: calls onUpdate(run) with the run's status and progress merged from each event,
 * and resolves with the final status. The EventSource reconnects on its own (Last-Event-ID).
 */
export function followRun(run, onUpdate, onEvent) {
  return new Promise((resolve) => {
    const current = { ...run, progress: { ...(run.progress || {}) } };
    const source = new EventSource(run.events_url || `/api/v1/training-runs/${run.id}/events`);
    const handle = (kind) => (e) => {
      const data = JSON.parse(e.data);
      if (kind === "status") current.status = data.status;
      else if (kind === "progress" || kind === "epoch") {
        current.status = current.status === "queued" ? "running" : current.status;
        current.progress = data;
      }
      onEvent?.(kind, data);
      onUpdate(current);
    };
    for (const kind of ["status", "progress", "epoch", "log"]) source.addEventListener(kind, handle(kind));
    source.addEventListener("end", async (e) => {
      source.close();
      current.status = JSON.parse(e.data).status;
      try {
        const res = await fetch(`/api/v1/training-runs/${run.id}`, { credentials: "same-origin" });
        if (res.ok) Object.assign(current, await res.json());
      } catch (err) {
        console.error(err);
      }
      onUpdate(current);
      resolve(current);
    });
  });
}
