// Replays an asciicast v2 recording into xterm.js, honouring its timing and resizes.
(function () {
  "use strict";
  const url = JSON.parse(document.getElementById("replay-cast-url").textContent);
  const status = document.getElementById("replay-status");
  const speed = document.getElementById("replay-speed");
  let term = null;
  let timers = [];

  function play(header, events) {
    timers.forEach(clearTimeout);
    timers = [];
    if (term) term.dispose();
    term = new Terminal({ cols: header.width, rows: header.height, scrollback: 5000 });
    term.open(document.getElementById("terminal"));
    const factor = Number(speed.value);
    events.forEach(function (event) {
      const at = event[0], code = event[1], data = event[2];
      timers.push(setTimeout(function () {
        if (code === "o") term.write(data);
        if (code === "r") {
          const size = data.split("x").map(Number);
          term.resize(size[0], size[1]);
        }
      }, (at * 1000) / factor));
    });
    const end = events.length ? events[events.length - 1][0] : 0;
    status.textContent = events.length + " events, " + end.toFixed(1) + " s";
  }

  fetch(url, { credentials: "same-origin" })
    .then(function (response) { return response.text(); })
    .then(function (text) {
      const lines = text.split("\n").filter(Boolean).map(JSON.parse);
      const header = lines[0], events = lines.slice(1);
      document.getElementById("replay-start").onclick = function () { play(header, events); };
      play(header, events);
    })
    .catch(function (error) { status.textContent = "cannot load recording: " + error; });
})();
