// The visible text lines of the page in the viewport, as [text, x1, y1, x2, y2] in CSS px from the
// viewport's top-left, sorted top to bottom, then left to right. Run by formats/sources/html_pages.py
// through Playwright's page.evaluate (which works with the page's own JavaScript disabled).
//
// Pieces: each text node whose parent element is drawn (Element.checkVisibility: not display:none,
// not visibility:hidden, not opacity:0, itself or through an ancestor) is measured with a Range
// (Range.getClientRects: one rect per line fragment). A node with one fragment that lies inside the
// viewport is one piece; otherwise each word (a run of non-space characters) is measured, and a word
// that itself breaks across lines (Chinese, `word-break: break-all`) is measured per character. A
// piece partly outside the viewport is dropped (its text is not all in the image).
// Lines: pieces of the same block (the nearest ancestor whose display is not inline-*) join in
// document order while they overlap vertically by more than half the smaller height, do not go back
// to the left, and leave a gap of at most twice the line's height; pieces join with one space where
// the DOM has whitespace between them. `text-transform` upper/lower/capitalize is applied.
([width, height]) => {
  const shown = new Map(), blocks = new Map();
  const isShown = (el) => {
    if (!shown.has(el)) shown.set(el, el.checkVisibility({opacityProperty: true, visibilityProperty: true}));
    return shown.get(el);
  };
  const blockOf = (el) => {
    if (!blocks.has(el)) {
      let b = el;
      while (b.parentElement && /^(inline|contents)/.test(getComputedStyle(b).display)) b = b.parentElement;
      blocks.set(el, b);
    }
    return blocks.get(el);
  };
  const transform = (word, el) => {
    const t = getComputedStyle(el).textTransform;
    if (t === "uppercase") return word.toUpperCase();
    if (t === "lowercase") return word.toLowerCase();
    if (t === "capitalize") return word.charAt(0).toUpperCase() + word.slice(1);
    return word;
  };
  const rects = (range) => Array.from(range.getClientRects()).filter((r) => r.width > 0 && r.height > 0);
  const inside = (r) => r.left >= 0 && r.top >= 0 && r.right <= width && r.bottom <= height;
  const pieces = [];
  const add = (text, r, el, space) => {
    if (inside(r)) pieces.push({text, x1: r.left, y1: r.top, x2: r.right, y2: r.bottom, block: blockOf(el), space});
  };
  const range = document.createRange();
  const walker = document.createTreeWalker(document.documentElement, NodeFilter.SHOW_TEXT);
  let spaceBefore = false;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    const words = Array.from(node.data.matchAll(/\S+/g));
    if (!words.length) spaceBefore = spaceBefore || node.data.length > 0;  // whitespace between elements
    if (!el || !words.length || !isShown(el)) continue;
    range.selectNodeContents(node);
    const fragments = rects(range);
    const within = fragments.filter((r) => r.right > 0 && r.bottom > 0 && r.left < width && r.top < height);
    let space = spaceBefore || /^\s/.test(node.data);
    if (within.length === 1 && fragments.length === 1 && inside(fragments[0])) {
      add(words.map((w) => transform(w[0], el)).join(" "), fragments[0], el, space);
    } else if (within.length) {
      for (const w of words) {
        range.setStart(node, w.index);
        range.setEnd(node, w.index + w[0].length);
        const parts = rects(range);
        if (parts.length === 1) {
          add(transform(w[0], el), parts[0], el, space);
        } else if (parts.length > 1) {
          let offset = w.index;
          for (const ch of w[0]) {  // code points: a surrogate pair stays whole
            range.setStart(node, offset);
            range.setEnd(node, offset + ch.length);
            const [r] = rects(range);
            if (r) add(transform(ch, el), r, el, space && offset === w.index);
            offset += ch.length;
          }
        }
        space = true;
      }
    }
    spaceBefore = /\s$/.test(node.data);
  }
  const lines = [], open = new Map();
  for (const p of pieces) {
    const line = open.get(p.block);
    const overlap = line && Math.min(line.y2, p.y2) - Math.max(line.y1, p.y1);
    if (line && overlap > 0.5 * Math.min(line.y2 - line.y1, p.y2 - p.y1) && p.x1 >= line.x2 - 1
        && p.x1 - line.x2 <= 2 * (line.y2 - line.y1)) {
      line.text += (p.space ? " " : "") + p.text;
      line.x2 = Math.max(line.x2, p.x2);
      line.y1 = Math.min(line.y1, p.y1);
      line.y2 = Math.max(line.y2, p.y2);
    } else {
      const started = {text: p.text, x1: p.x1, y1: p.y1, x2: p.x2, y2: p.y2};
      lines.push(started);
      open.set(p.block, started);
    }
  }
  lines.sort((a, b) => a.y1 - b.y1 || a.x1 - b.x1);
  return lines.map((l) => [l.text, l.x1, l.y1, l.x2, l.y2]);
}
