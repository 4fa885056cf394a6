// Uploads with a progress bar: the form still works without JavaScript.
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
  document.querySelectorAll("form[data-upload]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      const input = form.querySelector("input[type=file]");
      if (!input || !input.files.length || !window.FormData) return; // let the browser post it
      event.preventDefault();
      const box = form.querySelector("[data-progress]");
      const button = form.querySelector("button[type=submit]");
      box.hidden = false;
      box.classList.remove("failed");
      button.disabled = true;
      setProgress(box, 0);
      say(box, "uploading", 0);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.action || window.location.href);
      xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", (e) => {
        if (!e.lengthComputable) return;
        const percent = Math.min(100, Math.round((e.loaded / e.total) * 100));
        setProgress(box, percent);
        say(box, percent >= 100 ? "processing" : "uploading", percent);
      });
      xhr.addEventListener("load", () => {
        let data = {};
        try { data = JSON.parse(xhr.responseText); } catch (err) { data = { ok: false, message: xhr.statusText }; }
        if (xhr.status < 300 && data.ok) {
          say(box, "processing");
          window.location.href = data.redirect || window.location.href;
        } else {
          box.classList.add("failed");
          box.querySelector("[data-progress-text]").textContent = data.message || box.querySelector("[data-progress-text]").dataset.failed;
          button.disabled = false;
        }
      });
      xhr.addEventListener("error", () => {
        box.classList.add("failed");
        say(box, "network");
        button.disabled = false;
      });
      xhr.send(new FormData(form));
    });
  });
})();
