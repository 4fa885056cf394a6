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
    let tries = 0;
    const tick = () => (++tries > 200) ? null : fetch(url, { headers: { Accept: "application/json", "X-Poll": "1" } })
      .then((r) => r.json())
      .then((s) => {
        const filesDone = (s.files || []).every((f) => f.status !== "spooled");
        if (filesDone && s.storage !== "pending") window.location.reload();
        else setTimeout(tick, 1500);
      })
      .catch(() => setTimeout(tick, 4000));
    setTimeout(tick, 1500);
  }
  // The edit page reloads while a file is being stored, for a few minutes at most.
  if (!poll && document.querySelector("[data-file-status]")) {
    const key = "yilian-reloads:" + window.location.pathname;
    const count = parseInt(sessionStorage.getItem(key) || "0", 10);
    if (count < 60) {
      sessionStorage.setItem(key, String(count + 1));
      setTimeout(() => window.location.reload(), 3000);
    }
  } else if (!poll) {
    sessionStorage.removeItem("yilian-reloads:" + window.location.pathname);
  }
})();
