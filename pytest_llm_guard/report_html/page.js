"use strict";
(function () {
  var table = document.getElementById("tests");
  if (!table) return;
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  var collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
  function testRows() { return Array.prototype.slice.call(body.querySelectorAll("tr.test")); }
  function toggle(row) {
    var detail = row.llmDetail;
    if (!detail) {
      detail = document.createElement("tr");
      detail.className = "detail";
      var cell = detail.insertCell(0);
      cell.colSpan = row.cells.length;
      var template = document.getElementById("tl-" + row.getAttribute("data-i"));
      if (template) cell.appendChild(template.content.cloneNode(true));
      detail.hidden = true;
      row.parentNode.insertBefore(detail, row.nextSibling);
      row.llmDetail = detail;
    }
    detail.hidden = !detail.hidden;
    row.classList.toggle("open", !detail.hidden);
    row.querySelector(".tg").setAttribute("aria-expanded", String(!detail.hidden));
  }
  body.addEventListener("click", function (event) {
    var row = event.target.closest("tr.test");
    if (!row) return;
    if (!event.target.closest("button") && String(window.getSelection()) !== "") return;
    toggle(row);
  });
  function value(row, column, type) {
    var cell = row.cells[column];
    if (type === "num") {
      var raw = cell.getAttribute("data-v");
      return raw === null || raw === "" ? null : parseFloat(raw);
    }
    return cell.textContent.trim();
  }
  function sortBy(column, type, direction) {
    var sign = direction === "ascending" ? 1 : -1;
    var rows = testRows().map(function (row) {
      return {row: row, key: value(row, column, type), i: Number(row.getAttribute("data-i"))};
    });
    rows.sort(function (a, b) {
      if (a.key === null || b.key === null) {
        return a.key === b.key ? a.i - b.i : (a.key === null ? 1 : -1);
      }
      var d = type === "num" ? a.key - b.key : collator.compare(a.key, b.key);
      return d !== 0 ? sign * d : a.i - b.i;
    });
    var fragment = document.createDocumentFragment();
    rows.forEach(function (item) {
      fragment.appendChild(item.row);
      if (item.row.llmDetail) fragment.appendChild(item.row.llmDetail);
    });
    body.appendChild(fragment);
    Array.prototype.forEach.call(heads, function (th, i) {
      if (i === column) th.setAttribute("aria-sort", direction); else th.removeAttribute("aria-sort");
    });
  }
  Array.prototype.forEach.call(heads, function (th, column) {
    var button = th.querySelector("button");
    if (!button) return;
    button.addEventListener("click", function () {
      var type = th.getAttribute("data-type");
      var now = th.getAttribute("aria-sort");
      var first = type === "num" ? "descending" : "ascending";
      var next = now === null ? first : (now === "ascending" ? "descending" : "ascending");
      sortBy(column, type, next);
    });
  });
  var filter = document.getElementById("filter");
  var shown = document.getElementById("shown");
  var total = testRows().length;
  filter.addEventListener("input", function () {
    var query = filter.value.trim().toLowerCase();
    var count = 0;
    testRows().forEach(function (row) {
      var text = (row.cells[0].textContent + " " + row.cells[1].textContent).toLowerCase();
      var hit = query === "" || text.indexOf(query) !== -1;
      row.hidden = !hit;
      if (row.llmDetail) row.llmDetail.hidden = !hit || !row.classList.contains("open");
      if (hit) count += 1;
    });
    var all = total + (total === 1 ? " test" : " tests");
    shown.textContent = count === total ? all : count + " of " + all;
  });
})();
