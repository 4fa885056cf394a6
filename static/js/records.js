// Record pages: formset rows, the draft page's uploads, processing status, DICOM previews.
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

  // The draft page is one form: the text, the files, and the buttons that save, upload or sign it.
  // With files chosen, the script first saves the text as shown, then sends each file with a
  // progress bar, then (for "Sign and finalise") submits the form again, without the files.
  const draft = document.querySelector("form[data-draft]");
  if (draft && window.YilianUpload && window.FormData) {
    const up = window.YilianUpload;
    const input = document.querySelector('input[type=file][form="draft-form"]');
    const box = input ? input.closest(".form").querySelector("[data-progress]") : null;
    draft.addEventListener("submit", async (event) => {
      const submitter = event.submitter;
      const files = input && input.files.length ? Array.from(input.files) : [];
      if (!files.length) return; // a plain save or signature: the browser posts it
      event.preventDefault();
      const buttons = document.querySelectorAll('[form="draft-form"], #draft-form button');
      buttons.forEach((b) => { b.disabled = true; });
      const token = up.csrfToken(draft);
      const text = new FormData(draft);
      text.delete("file");
      let saved;
      try {
        saved = await fetch(draft.action, {
          method: "POST",
          body: text,
          headers: { Accept: "application/json", "X-CSRFToken": token },
          credentials: "same-origin",
        });
      } catch (err) {
        buttons.forEach((b) => { b.disabled = false; });
        up.fail(box, null, up.networkMessage(box));
        return;
      }
      if (!saved.ok) {
        // The server shows what to correct on the page itself.
        input.value = "";
        HTMLFormElement.prototype.submit.call(draft);
        return;
      }
      try {
        await up.sendAll(box, draft.dataset.uploadUrl, token, files, {});
      } catch (err) {
        buttons.forEach((b) => { b.disabled = false; });
        up.fail(box, null, up.networkMessage(box, err));
        return;
      }
      input.value = "";
      if (submitter && submitter.hasAttribute("data-finalize-button")) {
        buttons.forEach((b) => { b.disabled = false; });
        draft.requestSubmit(submitter);
      } else {
        window.location.href = draft.action;
      }
    });
  }

  // Files still being stored: ask for their status and update them in place, so nothing typed is lost.
  const statusUrl = document.querySelector("[data-status-url]")?.dataset.statusUrl;
  const pending = () => Array.from(document.querySelectorAll("[data-file-status]"));
  function checkFiles(status) {
    const byId = new Map((status.files || []).map((f) => [f.id, f]));
    pending().forEach((badge) => {
      const file = byId.get(badge.dataset.fileStatus);
      const state = file && file.status;
      if (state === "stored" && file.here !== false) {
        const link = document.createElement("a");
        link.className = "btn btn-small";
        link.href = badge.dataset.download;
        link.textContent = badge.dataset.storedLabel;
        badge.replaceWith(link);
      } else if (state === "failed") {
        badge.className = "badge badge-bad";
        badge.textContent = badge.dataset.failedLabel;
        badge.removeAttribute("data-file-status");
      }
    });
  }

  // The record page: poll until stored *and* anchored, then show it once more. The reload carries
  // this page visit's token, so the reader's footprint gets one "Viewed", not one per poll.
  const poll = document.querySelector("[data-poll]");
  if (poll) {
    let tries = 0;
    const tick = () => (++tries > 400) ? null : fetch(poll.dataset.poll, { headers: { Accept: "application/json" } })
      .then((r) => r.json())
      .then((s) => {
        const filesDone = (s.files || []).every((f) => f.status !== "spooled" && f.here !== false);
        if (filesDone && s.storage === "stored" && s.anchored) {
          const url = new URL(window.location.href);
          url.searchParams.set("pv", poll.dataset.pageVisit || "");
          window.location.replace(url.toString());
        } else setTimeout(tick, 1500);
      })
      .catch(() => setTimeout(tick, 4000));
    setTimeout(tick, 1500);
  } else if (statusUrl && pending().length) {
    let tries = 0;
    const tick = () => (++tries > 400 || !pending().length) ? null : fetch(statusUrl, { headers: { Accept: "application/json" } })
      .then((r) => r.json())
      .then((s) => { checkFiles(s); setTimeout(tick, 2000); })
      .catch(() => setTimeout(tick, 5000));
    setTimeout(tick, 1500);
  }

  // A DICOM preview that cannot be drawn says so instead of showing a broken image.
  document.querySelectorAll("img[data-missing]").forEach((img) => {
    const missing = () => {
      const note = document.createElement("p");
      note.className = "muted";
      note.textContent = img.dataset.missing;
      img.replaceWith(note);
    };
    if (img.complete && img.naturalWidth === 0 && img.getAttribute("loading") !== "lazy") missing();
    else img.addEventListener("error", missing);
  });
})();
