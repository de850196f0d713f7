// A small Web Mercator map on a canvas: a projected grid with a scale bar, tiles drawn over it
// when they load, and a device's track on top. The grid is always drawn first, so when tiles
// cannot load (no network, blocked, none configured) the positions still make sense.
"use strict";

(function () {
  const TILE = 256;
  const MIN_ZOOM = 1;
  const MAX_ZOOM = 19;
  const EARTH_CIRCUMFERENCE = 40075016.686; // metres, at the equator

  // Longitude/latitude to world pixels at `zoom`.
  function project(lon, lat, zoom) {
    const size = TILE * Math.pow(2, zoom);
    const clamped = Math.max(-85.05112878, Math.min(85.05112878, lat));
    const s = Math.sin(clamped * Math.PI / 180);
    return {
      x: (lon + 180) / 360 * size,
      y: (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * size,
    };
  }

  function unproject(x, y, zoom) {
    const size = TILE * Math.pow(2, zoom);
    const lon = x / size * 360 - 180;
    const n = Math.PI - 2 * Math.PI * y / size;
    const lat = 180 / Math.PI * Math.atan(Math.sinh(n));
    return { lon: lon, lat: lat };
  }

  function metresPerPixel(lat, zoom) {
    return EARTH_CIRCUMFERENCE * Math.cos(lat * Math.PI / 180) / (TILE * Math.pow(2, zoom));
  }

  // 1, 2 or 5 times a power of ten, the largest not above `value`.
  function niceBelow(value) {
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    const unit = value / power;
    return (unit >= 5 ? 5 : unit >= 2 ? 2 : 1) * power;
  }

  function FoxMap(canvas, caption) {
    this.canvas = canvas;
    this.caption = caption;
    this.zoom = 3;
    this.center = { lon: 0, lat: 20 };
    this.points = [];
    this.tileUrl = null;
    this.attribution = "";
    this.tiles = new Map();
    this.failedTiles = 0;
    this.loadedTiles = 0;
    this.fitted = false;
    this.bind();
    this.resize();
  }

  FoxMap.prototype.setTiles = function (tiles) {
    this.tileUrl = tiles && tiles.url ? tiles.url : null;
    this.attribution = tiles && tiles.attribution ? tiles.attribution : "";
    this.draw();
  };

  // `points`: [{lat, lon, acc, time_ms}], oldest first.
  FoxMap.prototype.setTrack = function (points) {
    const changed = points.length !== this.points.length ||
      (points.length && this.points.length &&
        points[points.length - 1].time_ms !== this.points[this.points.length - 1].time_ms);
    this.points = points;
    if (!this.fitted || changed) {
      this.fit();
    } else {
      this.draw();
    }
  };

  FoxMap.prototype.fit = function () {
    const pts = this.points;
    if (!pts.length) {
      this.draw();
      return;
    }
    this.fitted = true;
    let zoom = 16;
    const width = this.width || 640;
    const height = this.height || 400;
    for (; zoom > MIN_ZOOM; zoom--) {
      const xs = pts.map(p => project(p.lon, p.lat, zoom));
      const spanX = Math.max.apply(null, xs.map(p => p.x)) - Math.min.apply(null, xs.map(p => p.x));
      const spanY = Math.max.apply(null, xs.map(p => p.y)) - Math.min.apply(null, xs.map(p => p.y));
      if (spanX < width * 0.7 && spanY < height * 0.7) break;
    }
    const xs = pts.map(p => project(p.lon, p.lat, zoom));
    const cx = (Math.max.apply(null, xs.map(p => p.x)) + Math.min.apply(null, xs.map(p => p.x))) / 2;
    const cy = (Math.max.apply(null, xs.map(p => p.y)) + Math.min.apply(null, xs.map(p => p.y))) / 2;
    this.zoom = zoom;
    this.center = unproject(cx, cy, zoom);
    this.draw();
  };

  FoxMap.prototype.zoomBy = function (delta) {
    this.zoom = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, this.zoom + delta));
    this.draw();
  };

  FoxMap.prototype.panBy = function (dx, dy) {
    const c = project(this.center.lon, this.center.lat, this.zoom);
    this.center = unproject(c.x + dx, c.y + dy, this.zoom);
    this.draw();
  };

  FoxMap.prototype.bind = function () {
    const self = this;
    const canvas = this.canvas;
    canvas.tabIndex = 0;
    canvas.setAttribute("aria-roledescription", "map");
    let drag = null;
    canvas.addEventListener("pointerdown", function (e) {
      drag = { x: e.clientX, y: e.clientY };
      canvas.setPointerCapture(e.pointerId);
    });
    canvas.addEventListener("pointermove", function (e) {
      if (!drag) return;
      const ratio = self.width / canvas.clientWidth;
      self.panBy((drag.x - e.clientX) * ratio, (drag.y - e.clientY) * ratio);
      drag = { x: e.clientX, y: e.clientY };
    });
    canvas.addEventListener("pointerup", function () { drag = null; });
    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      self.zoomBy(e.deltaY < 0 ? 1 : -1);
    }, { passive: false });
    canvas.addEventListener("keydown", function (e) {
      const step = 64;
      const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
      if (moves[e.key]) {
        e.preventDefault();
        self.panBy(moves[e.key][0], moves[e.key][1]);
      } else if (e.key === "+" || e.key === "=") {
        e.preventDefault();
        self.zoomBy(1);
      } else if (e.key === "-") {
        e.preventDefault();
        self.zoomBy(-1);
      }
    });
    window.addEventListener("resize", function () { self.resize(); });
  };

  FoxMap.prototype.resize = function () {
    const ratio = window.devicePixelRatio || 1;
    const cssWidth = this.canvas.clientWidth || 640;
    const cssHeight = Math.round(cssWidth * 5 / 8);
    this.scale = ratio;
    this.canvas.width = Math.round(cssWidth * ratio);
    this.canvas.height = Math.round(cssHeight * ratio);
    this.width = cssWidth;
    this.height = cssHeight;
    this.draw();
  };

  FoxMap.prototype.tile = function (z, x, y) {
    const key = z + "/" + x + "/" + y;
    let entry = this.tiles.get(key);
    if (entry) return entry;
    const self = this;
    const img = new Image();
    entry = { img: img, state: "loading" };
    img.onload = function () { entry.state = "ok"; self.loadedTiles++; self.draw(); };
    img.onerror = function () { entry.state = "failed"; self.failedTiles++; self.updateCaption(); };
    img.src = this.tileUrl.replace("{z}", z).replace("{x}", x).replace("{y}", y);
    this.tiles.set(key, entry);
    // Bound the cache: a long session of panning must not grow it forever.
    if (this.tiles.size > 400) {
      const first = this.tiles.keys().next().value;
      this.tiles.delete(first);
    }
    return entry;
  };

  FoxMap.prototype.updateCaption = function () {
    if (!this.caption) return;
    let text = "";
    if (!this.tileUrl) {
      text = "Plain Web Mercator grid (no map tiles configured).";
    } else if (this.failedTiles > 0 && this.loadedTiles === 0) {
      text = "Map tiles could not load: showing a plain Web Mercator grid. Map data " + this.attribution;
    } else {
      text = "Map data " + this.attribution;
    }
    if (this.caption.textContent !== text) this.caption.textContent = text;
  };

  FoxMap.prototype.draw = function () {
    const ctx = this.canvas.getContext("2d");
    if (!ctx || !this.width) return;
    const w = this.width;
    const h = this.height;
    ctx.setTransform(this.scale, 0, 0, this.scale, 0, 0);
    ctx.fillStyle = "#eef1f4";
    ctx.fillRect(0, 0, w, h);
    const z = this.zoom;
    const c = project(this.center.lon, this.center.lat, z);
    const left = c.x - w / 2;
    const top = c.y - h / 2;
    const toScreen = (lon, lat) => {
      const p = project(lon, lat, z);
      return { x: p.x - left, y: p.y - top };
    };
    this.drawGrid(ctx, z, left, top, w, h);
    if (this.tileUrl) this.drawTiles(ctx, z, left, top, w, h);
    this.drawTrack(ctx, toScreen, z);
    this.drawScale(ctx, h);
    this.updateCaption();
  };

  FoxMap.prototype.drawGrid = function (ctx, z, left, top, w, h) {
    const nw = unproject(left, top, z);
    const se = unproject(left + w, top + h, z);
    const degreesPerPixel = (se.lon - nw.lon) / w;
    const step = niceBelow(Math.max(degreesPerPixel * 110, 1e-6));
    ctx.strokeStyle = "#c9d0d8";
    ctx.lineWidth = 1;
    ctx.fillStyle = "#6b7580";
    ctx.font = "11px system-ui, sans-serif";
    const digits = Math.max(0, -Math.floor(Math.log10(step)));
    for (let lon = Math.ceil(nw.lon / step) * step; lon <= se.lon; lon += step) {
      const x = project(lon, 0, z).x - left;
      ctx.beginPath();
      ctx.moveTo(x + 0.5, 0);
      ctx.lineTo(x + 0.5, h);
      ctx.stroke();
      ctx.fillText(lon.toFixed(digits) + "°", x + 3, h - 4);
    }
    for (let lat = Math.ceil(se.lat / step) * step; lat <= nw.lat; lat += step) {
      const y = project(0, lat, z).y - top;
      ctx.beginPath();
      ctx.moveTo(0, y + 0.5);
      ctx.lineTo(w, y + 0.5);
      ctx.stroke();
      ctx.fillText(lat.toFixed(digits) + "°", 3, y - 3);
    }
  };

  FoxMap.prototype.drawTiles = function (ctx, z, left, top, w, h) {
    const count = Math.pow(2, z);
    const x0 = Math.floor(left / TILE);
    const x1 = Math.floor((left + w) / TILE);
    const y0 = Math.max(0, Math.floor(top / TILE));
    const y1 = Math.min(count - 1, Math.floor((top + h) / TILE));
    for (let ty = y0; ty <= y1; ty++) {
      for (let tx = x0; tx <= x1; tx++) {
        const wrapped = ((tx % count) + count) % count;
        const entry = this.tile(z, wrapped, ty);
        if (entry.state === "ok") {
          ctx.drawImage(entry.img, tx * TILE - left, ty * TILE - top, TILE, TILE);
        }
      }
    }
  };

  FoxMap.prototype.drawTrack = function (ctx, toScreen, z) {
    const pts = this.points;
    if (!pts.length) return;
    const screen = pts.map(p => toScreen(p.lon, p.lat));
    // Accuracy circles first, so lines and dots stay readable over them.
    pts.forEach(function (p, i) {
      if (typeof p.acc !== "number" || p.acc <= 0) return;
      const r = p.acc / metresPerPixel(p.lat, z);
      if (r < 2) return;
      ctx.beginPath();
      ctx.arc(screen[i].x, screen[i].y, r, 0, 2 * Math.PI);
      ctx.fillStyle = i === pts.length - 1 ? "rgba(10,91,211,.15)" : "rgba(90,90,96,.08)";
      ctx.fill();
    });
    ctx.strokeStyle = "#0a5bd3";
    ctx.lineWidth = 3;
    ctx.lineJoin = "round";
    ctx.beginPath();
    screen.forEach(function (s, i) { if (i === 0) ctx.moveTo(s.x, s.y); else ctx.lineTo(s.x, s.y); });
    ctx.stroke();
    ctx.font = "bold 11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    screen.forEach(function (s, i) {
      const last = i === screen.length - 1;
      ctx.beginPath();
      ctx.arc(s.x, s.y, last ? 10 : 7, 0, 2 * Math.PI);
      ctx.fillStyle = last ? "#d70022" : "#fff";
      ctx.fill();
      ctx.lineWidth = 2;
      ctx.strokeStyle = last ? "#fff" : "#0a5bd3";
      ctx.stroke();
      ctx.fillStyle = last ? "#fff" : "#0a5bd3";
      // Numbered in time order: 1 is the oldest kept.
      ctx.fillText(String(i + 1), s.x, s.y + 0.5);
    });
    ctx.textAlign = "start";
    ctx.textBaseline = "alphabetic";
  };

  FoxMap.prototype.drawScale = function (ctx, h) {
    const mpp = metresPerPixel(this.center.lat, this.zoom);
    const metres = niceBelow(mpp * 120);
    const px = metres / mpp;
    const label = metres >= 1000 ? (metres / 1000) + " km" : metres + " m";
    const x = 12;
    const y = h - 22;
    ctx.fillStyle = "rgba(255,255,255,.85)";
    ctx.fillRect(x - 6, y - 16, px + 12, 24);
    ctx.strokeStyle = "#1d1d1f";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(x, y - 4);
    ctx.lineTo(x, y + 2);
    ctx.lineTo(x + px, y + 2);
    ctx.lineTo(x + px, y - 4);
    ctx.stroke();
    ctx.fillStyle = "#1d1d1f";
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText(label, x + 4, y - 4);
  };

  window.FoxMap = FoxMap;
})();
