// Renders /openapi.json locally (FastAPI's default /docs loads its viewer from a CDN).
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function refName(schema) {
  return schema && schema.$ref ? schema.$ref.split("/").pop() : null;
}

function describeBody(body) {
  const out = [];
  for (const [type, media] of Object.entries(body.content || {})) {
    const name = refName(media.schema);
    out.push(`${type}: ${name || JSON.stringify(media.schema)}`);
  }
  return out.join("; ");
}

async function render() {
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("version").textContent = "version " + spec.info.version;
  document.getElementById("description").textContent = spec.info.description || "";
  const paths = document.getElementById("paths");
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const box = el("section", undefined, "op");
      const title = el("h3");
      title.append(el("span", method.toUpperCase(), "method " + method), " " + path);
      box.appendChild(title);
      box.appendChild(el("p", op.summary || ""));
      if (op.parameters && op.parameters.length) {
        const table = el("table");
        table.appendChild(el("tr")).append(el("th", "parameter"), el("th", "in"), el("th", "type"));
        for (const p of op.parameters) {
          table.appendChild(el("tr")).append(el("td", p.name), el("td", p.in), el("td", (p.schema && p.schema.type) || ""));
        }
        box.appendChild(table);
      }
      if (op.requestBody) box.appendChild(el("p", "Body: " + describeBody(op.requestBody)));
      const codes = Object.keys(op.responses || {}).join(", ");
      if (codes) box.appendChild(el("p", "Responses: " + codes));
      paths.appendChild(box);
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries((spec.components || {}).schemas || {})) {
    if (name.startsWith("HTTPValidationError") || name === "ValidationError") continue;
    schemas.appendChild(el("h3", name));
    const rows = el("table");
    rows.appendChild(el("tr")).append(el("th", "field"), el("th", "type"), el("th", "description"));
    for (const [field, prop] of Object.entries(schema.properties || {})) {
      const type = prop.type || (prop.anyOf || []).map((s) => s.type || refName(s)).join(" | ");
      const required = (schema.required || []).includes(field) ? " (required)" : "";
      rows.appendChild(el("tr")).append(el("td", field + required), el("td", type), el("td", prop.description || ""));
    }
    schemas.appendChild(rows);
    if (schema.example) schemas.appendChild(el("pre", JSON.stringify(schema.example, null, 2)));
  }
}

render().catch((error) => { document.getElementById("paths").textContent = "cannot load /openapi.json: " + error; });
