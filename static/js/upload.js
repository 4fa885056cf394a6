// Uploads with a progress bar. Each file is sent as the raw request body (no
// multipart), one after another; the other form fields travel JSON-encoded in
// a header. Without JavaScript the form still posts as multipart.
// The helpers are shared with the draft page (records.js) as window.YilianUpload.
(function () {
  function setProgress(box, percent) {
    const bar = box.querySelector(".progress");
    bar.setAttribute("aria-valuenow", String(percent));
    bar.querySelector("span").style.width = percent + "%";
  }
  function say(box, key, percent) {
    const text = box.querySelector("[data-progress-text]");
    text.textContent = (text.dataset[key] || "").replace("%(percent)s", String(percent ?? ""));
  }
  function fail(box, button, message) {
    box.classList.add("failed");
    box.querySelector("[data-progress-text]").textContent = message;
    if (button) button.disabled = false;
  }
  function csrfToken(form) {
    const input = form.querySelector("[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }
  function fieldsOf(form) {
    const fields = {};
    new FormData(form).forEach((value, key) => {
      if (typeof value === "string" && key !== "csrfmiddlewaretoken") fields[key] = value;
    });
    return fields;
  }
  function sendOne(url, token, file, fields, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
      xhr.setRequestHeader("X-CSRFToken", token);
      xhr.setRequestHeader("X-Upload-Name", encodeURIComponent(file.name));
      xhr.setRequestHeader("X-Upload-Fields", encodeURIComponent(JSON.stringify(fields || {})));
      xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded));
      xhr.addEventListener("load", () => {
        let data = {};
        try { data = JSON.parse(xhr.responseText); } catch (err) { data = { ok: false, message: xhr.statusText }; }
        if (xhr.status < 300 && data.ok) resolve(data);
        else reject(new Error(data.message || ""));
      });
      xhr.addEventListener("error", () => reject(new Error("")));
      xhr.send(file);
    });
  }
  // Send every file with one progress bar; resolves with the last answer, rejects with a message.
  async function sendAll(box, url, token, files, fields) {
    const total = files.reduce((sum, f) => sum + f.size, 0) || 1;
    box.hidden = false;
    box.classList.remove("failed");
    setProgress(box, 0);
    say(box, "uploading", 0);
    let done = 0;
    let last = {};
    for (const file of files) {
      last = await sendOne(url, token, file, fields, (loaded) => {
        const percent = Math.min(100, Math.round(((done + loaded) / total) * 100));
        setProgress(box, percent);
        say(box, percent >= 100 ? "processing" : "uploading", percent);
      });
      done += file.size;
    }
    setProgress(box, 100);
    say(box, "processing");
    return last;
  }
  function networkMessage(box, err) {
    const text = box.querySelector("[data-progress-text]");
    return (err && err.message) || text.dataset.network || text.dataset.failed;
  }
  window.YilianUpload = { sendAll, fail, csrfToken, networkMessage, setProgress, say };

  document.querySelectorAll("form[data-upload]").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      const input = form.querySelector("input[type=file]");
      if (!input || !input.files.length || !window.FormData) return; // let the browser post it
      if (!form.reportValidity()) return;
      event.preventDefault();
      const box = form.querySelector("[data-progress]");
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      let last;
      try {
        last = await sendAll(box, form.action || window.location.href, csrfToken(form), Array.from(input.files), fieldsOf(form));
      } catch (err) {
        fail(box, button, networkMessage(box, err));
        return;
      }
      window.location.href = last.redirect || window.location.href;
    });
  });
})();
