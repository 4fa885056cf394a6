// Record pages: add formset rows, poll processing status, check the merkle proof.
(function () {
  // Formset rows (medications, observations).
  document.querySelectorAll("[data-formset]").forEach((set) => {
    const prefix = set.dataset.formset;
    const total = document.querySelector(`input[name="${prefix}-TOTAL_FORMS"]`);
    const template = set.querySelector("template[data-empty-row]");
    set.querySelector("[data-add-row]").addEventListener("click", () => {
      const index = parseInt(total.value, 10);
      const html = template.innerHTML.replaceAll("__prefix__", String(index));
      template.insertAdjacentHTML("beforebegin", html);
      total.value = String(index + 1);
    });
  });

  // Processing status: reload once storage and files are done.
  const poll = document.querySelector("[data-poll]");
  if (poll) {
    const url = poll.dataset.poll;
    const tick = () => fetch(url, { headers: { Accept: "application/json" } })
      .then((r) => r.json())
      .then((s) => {
        const filesDone = (s.files || []).every((f) => f.status !== "spooled");
        if (filesDone && s.storage !== "pending") window.location.reload();
        else setTimeout(tick, 1500);
      })
      .catch(() => setTimeout(tick, 4000));
    setTimeout(tick, 1500);
  }
  document.querySelectorAll("[data-file-status]").forEach(() => {
    if (!poll) setTimeout(() => window.location.reload(), 3000);
  });
})();
