"""Stand-in for Airflow's template rendering (tests only): Templater.render_template
(2.x: airflow/template/templater.py; 3.x: task-sdk/src/airflow/sdk/definitions/
_internal/templater.py), which BaseOperator.render_template_fields applies to
each name in template_fields before execute() and before resume_execution():

- a str is rendered as a template: to a str, or, when the DAG sets
  render_template_as_native_obj=True, to a native value (Jinja's
  NativeEnvironment: the single expression's value itself; otherwise the
  output is given to ast.literal_eval, and kept as a str when that fails);
- a tuple, list, dict (its values; keys are not rendered) or set is rendered
  element by element into a new one of its kind;
- anything else is kept as it is (objects with template_fields of their own
  are not mirrored);
- the field is set only when the rendered value is truthy
  (_do_render_template_fields: `if rendered_content: setattr(...)`).

NOT Jinja: the stand-in's templates know `{{ name.attr.key }}` only (dotted
lookups in the context: attribute, else item, as Jinja's getattr does), which
is what the tests use; anything else raises."""

import ast
import re

_EXPRESSION = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


class TemplateNotMirrored(Exception):
    """A template the stand-in cannot render (it is not Jinja)."""


def _lookup(expression, context):
    if not _PATH.match(expression):
        raise TemplateNotMirrored("the stand-in renders dotted names only, not {{ %s }}"
                                  % expression)
    name, *parts = expression.split(".")
    value = context[name]
    for part in parts:
        try:
            value = getattr(value, part)
        except AttributeError:
            value = value[part]
    return value


def _nodes(template, context):
    """The template's output nodes, as Jinja yields them: literal text and
    the values of the expressions."""
    if "{%" in template or "{#" in template:
        raise TemplateNotMirrored("the stand-in has no Jinja statements or comments")
    nodes, at = [], 0
    for m in _EXPRESSION.finditer(template):
        if m.start() > at:
            nodes.append(template[at:m.start()])
        nodes.append(_lookup(m.group(1), context))
        at = m.end()
    if at < len(template):
        nodes.append(template[at:])
    return nodes


def _native_concat(nodes):
    """jinja2.nativetypes.native_concat."""
    if not nodes:
        return None
    if len(nodes) == 1:
        raw = nodes[0]
        if not isinstance(raw, str):
            return raw
    else:
        raw = "".join(str(v) for v in nodes)
    try:
        return ast.literal_eval(ast.parse(raw, mode="eval"))
    except (ValueError, SyntaxError, MemoryError):
        return raw


def render_string(template, context, native):
    nodes = _nodes(template, context)
    if native:
        return _native_concat(nodes)
    return "".join(str(v) for v in nodes)


def render_template(value, context, native):
    if isinstance(value, str):
        return render_string(value, context, native)
    if value.__class__ is tuple:
        return tuple(render_template(v, context, native) for v in value)
    if isinstance(value, list):
        return [render_template(v, context, native) for v in value]
    if isinstance(value, dict):
        return {k: render_template(v, context, native) for k, v in value.items()}
    if isinstance(value, set):
        return {render_template(v, context, native) for v in value}
    return value


def render_template_fields(operator, context):
    """BaseOperator.render_template_fields; native when the context's DAG has
    render_template_as_native_obj (Airflow reads the operator's DAG)."""
    native = bool(getattr(context.get("dag"), "render_template_as_native_obj", False))
    for name in operator.template_fields:
        rendered = render_template(getattr(operator, name), context, native)
        if rendered:
            setattr(operator, name, rendered)
