"""``lakeforge init``: create the example retail-shop project with generated landing data.

The project files (``lakeforge.yml``, SQL models, a Python pipeline, README) are package
data under ``templates/shop``; the landing files are generated here, deterministically for
a seed, with the dirt real feeds have: exact duplicate records, late updates of the same
order, customers who moved, null and badly formatted values. The template README lists it.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakeforge.errors import ConfigError
from lakeforge.project.config import CONFIG_FILE

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    import numpy as np
    import pyarrow as pa

TEMPLATE = "shop"
MIN_ORDER_LINES = 100
# Files that cannot ship under their real name in a wheel (dotfiles are not package data).
_RENAMES = {"gitignore": ".gitignore"}
_SKIPPED = {"__pycache__", ".DS_Store"}

_YEAR_START = "2024-01-01T00:00:00"
_DAY = 86_400

_CATEGORIES = (
    ("electronics", 80.0, ("Headphones", "Charger", "Speaker", "Keyboard")),
    ("books", 15.0, ("Novel", "Cookbook", "Atlas", "Guide")),
    ("home & kitchen", 35.0, ("Kettle", "Pan", "Lamp", "Blanket")),
    ("toys", 20.0, ("Puzzle", "Robot", "Kite", "Board Game")),
    ("sports", 40.0, ("Yoga Mat", "Football", "Water Bottle", "Racket")),
    ("beauty", 18.0, ("Shampoo", "Face Cream", "Perfume", "Brush")),
    ("grocery", 6.0, ("Coffee", "Olive Oil", "Tea", "Chocolate")),
    ("fashion", 30.0, ("T-Shirt", "Scarf", "Sneakers", "Jacket")),
    ("garden", 25.0, ("Hose", "Planter", "Seeds", "Gloves")),
    ("office", 12.0, ("Notebook", "Pen Set", "Stapler", "Desk Mat")),
)
_ADJECTIVES = (
    "Classic", "Compact", "Deluxe", "Eco", "Essential", "Mini", "Premium", "Pro", "Smart",
    "Sturdy", "Travel", "Vintage",
)  # fmt: skip
_FIRST_NAMES = (
    "Anna", "Ben", "Chloe", "David", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Karla",
    "Liam", "Mia", "Noah", "Olga", "Paul", "Quinn", "Rosa", "Sami", "Tara", "Ugo", "Vera",
    "Wim", "Xenia", "Yusuf", "Zoe",
)  # fmt: skip
_LAST_NAMES = (
    "Andersen", "Bauer", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Horvat", "Ivanova",
    "Jansen", "Keller", "Lopez", "Meyer", "Novak", "Olsen", "Peeters", "Rossi", "Schmidt",
    "Tanaka", "Urban", "Vogel", "Weber", "Young", "Zimmer",
)  # fmt: skip
_DOMAINS = ("example.com", "mail.test", "post.example", "inbox.test")
_STREETS = (
    "Market Street", "Mill Lane", "Station Road", "Church Street", "Park Avenue", "High Street",
    "Garden Row", "River Walk", "Linden Allee", "Harbour Quay", "Castle Hill", "Orchard Way",
)  # fmt: skip
_CITIES = (  # city, country, first two digits of its postal codes
    ("Berlin", "DE", 10), ("Hamburg", "DE", 20), ("Munich", "DE", 80), ("Paris", "FR", 75),
    ("Lyon", "FR", 69), ("Amsterdam", "NL", 10), ("Rotterdam", "NL", 30), ("Vienna", "AT", 10),
    ("Brussels", "BE", 10), ("Antwerp", "BE", 20), ("Copenhagen", "DK", 12), ("Milan", "IT", 20),
)  # fmt: skip
_STATUSES = ("placed", "shipped", "delivered", "cancelled")
_STATUS_P = (0.15, 0.25, 0.57, 0.03)
_CHANNELS = ("web", "app", "store")
_CHANNEL_P = (0.55, 0.35, 0.10)
_COUPONS = ("WELCOME5", "SPRING10", "SUMMER15", "VIP20", "FREESHIP")
_SHIPPING = (("standard", "4.99"), ("express", "9.99"), ("pickup", "0"))
_SHIPPING_P = (0.70, 0.20, 0.10)

# Share of records carrying each kind of dirt (see templates/shop/README.md).
_CUSTOMER_MOVES = 0.02
_NULL_EMAILS = 0.02
_MIXED_CASE_EMAILS = 0.03
_PADDED_VALUES = 0.02
_ORDER_LATE_UPDATES = 0.03
_ORDER_DUPLICATES = 0.01
_ORDER_NULL_COUPONS = 0.75
_LINE_DUPLICATES = 0.005
_ZERO_QUANTITY_LINES = 0.001
_DIRTY_CATEGORIES = 0.05


@dataclass
class ScaffoldResult:
    """What :func:`scaffold_project` created.

    Attributes:
        root: the project folder (absolute).
        files: every file created, sorted.
        rows: records landed per landing folder (``customers``, ``products``, ``orders``,
            ``order_lines``), dirt included.
    """

    root: Path
    files: list[Path] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


def scaffold_project(
    target: Path, *, size: int = 1_000_000, seed: int = 7, name: str | None = None
) -> ScaffoldResult:
    """Create the example shop project in ``target`` and generate its landing data.

    Args:
        target: the project folder; it must not exist or be empty.
        size: order lines to generate (orders ≈ size/3, customers ≈ orders/10).
        seed: random seed; the same seed gives byte-identical landing files.
        name: project name written to ``lakeforge.yml`` (default: the folder name).

    Raises:
        ConfigError: ``target`` is a file or a non-empty folder, or ``size`` is too small.
    """
    target = Path(target)
    _check_size(size)
    if target.exists() and not target.is_dir():
        raise ConfigError(
            f"cannot create a project in {target}: it is a file",
            hint="choose a folder name that does not exist yet",
        )
    if target.is_dir() and any(target.iterdir()):
        raise ConfigError(
            f"cannot create a project in {target}: the folder is not empty",
            hint="choose a new folder name (lakeforge init never overwrites files)",
        )
    created_folder = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        template = resources.files("lakeforge.project") / "templates" / TEMPLATE
        _copy_tree(template, root)
        _write_config(root / CONFIG_FILE, name or root.name)
        rows = generate_shop_data(root / "landing", order_lines=size, seed=seed)
    except BaseException:
        # Leave nothing half-made behind: the folder was absent or empty before.
        if created_folder:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for child in root.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return ScaffoldResult(root=root, files=files, rows=rows)


def _check_size(order_lines: int) -> None:
    if order_lines < MIN_ORDER_LINES:
        raise ConfigError(
            f"the example needs at least {MIN_ORDER_LINES} order lines; got {order_lines}",
            expected=f">= {MIN_ORDER_LINES}",
            found=order_lines,
            hint="pass a larger --size",
        )


def _copy_tree(source: Traversable, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.iterdir(), key=lambda t: t.name):
        if item.name in _SKIPPED or item.name.endswith(".pyc"):
            continue
        out = dest / _RENAMES.get(item.name, item.name)
        if item.is_dir():
            _copy_tree(item, out)
        else:
            out.write_bytes(item.read_bytes())


def _write_config(path: Path, name: str) -> None:
    # A JSON string is a valid YAML double-quoted scalar: any name stays a string.
    line = f"name: {json.dumps(name)}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    text, found = re.subn(r"^name:.*$", lambda _: line, text, count=1, flags=re.MULTILINE)
    if not found:
        text = f"{line}\n{text}"
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- landing data


def generate_shop_data(landing: Path, order_lines: int, seed: int) -> dict[str, int]:
    """Write the shop's landing files under ``landing``.

    Sizes follow ``order_lines``: orders ≈ order_lines/3, customers ≈ orders/10 (at least
    50), products between 200 and 2,000. Generation is vectorized (numpy + pyarrow) and
    deterministic: the same arguments give byte-identical files.

    Returns:
        records landed per folder (``customers``, ``products``, ``orders``, ``order_lines``),
        duplicates and updates included.
    """
    _check_size(order_lines)
    np = _numpy()
    n_orders = max(1, order_lines // 3)
    n_customers = max(50, n_orders // 10)
    n_products = min(2000, max(200, order_lines // 500))
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    for folder in ("customers", "products", "orders", "order_lines"):
        (landing / folder).mkdir(parents=True, exist_ok=True)
    prices = _write_products(landing / "products", n_products, rngs[0])
    customer_rows = _write_customers(landing / "customers", n_customers, rngs[1])
    orders = _order_headers(n_orders, n_customers, rngs[2])
    order_rows = _write_orders(landing / "orders", orders, rngs[2])
    line_rows = _write_order_lines(landing / "order_lines", orders, prices, order_lines, rngs[3])
    return {
        "customers": customer_rows,
        "products": n_products,
        "orders": order_rows,
        "order_lines": line_rows,
    }


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy ships with the default install
        raise ConfigError(
            "generating the example data needs numpy",
            hint="pip install numpy",
        ) from None
    return numpy


def _strings(values: Any) -> pa.Array:
    """numpy or Python values → an Arrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pa.array(values), pa.string())


def _pick(choices: tuple[str, ...], index: np.ndarray) -> pa.Array:
    import pyarrow as pa

    return pa.array(choices, pa.string()).take(pa.array(index))


def _join(*parts: Any) -> pa.Array:
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(*parts, "")


def _masked(mask: np.ndarray, then: Any, otherwise: Any) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.if_else(pa.array(mask), then, otherwise)


def _timestamps(seconds: np.ndarray, iso: bool) -> pa.Array:
    """Epoch seconds → ``YYYY-MM-DD HH:MM:SS`` or ISO-8601 UTC (``…T…Z``) strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.cast(pa.array(seconds.astype("datetime64[s]")), pa.string())
    return _join(pc.replace_substring(text, " ", "T"), "Z") if iso else text


def _epoch(iso: str) -> int:
    import numpy as np

    return int(np.datetime64(iso, "s").astype("int64"))


def _write_csv(table: pa.Table, path: Path) -> None:
    import pyarrow.csv as pcsv

    pcsv.write_csv(table, path)


def _write_products(folder: Path, n: int, rng: Any) -> np.ndarray:
    import numpy as np
    import pyarrow as pa

    category = rng.integers(0, len(_CATEGORIES), n)
    noun = rng.integers(0, 4, n)
    adjective = rng.integers(0, len(_ADJECTIVES), n)
    base = np.array([c[1] for c in _CATEGORIES])[category]
    price = np.maximum(0.99, np.round(base * rng.lognormal(0.0, 0.5, n), 2))
    product_id = np.arange(1, n + 1)
    names = [
        f"{_ADJECTIVES[a]} {_CATEGORIES[c][2][k]}"
        for a, c, k in zip(adjective.tolist(), category.tolist(), noun.tolist(), strict=True)
    ]
    categories = [_CATEGORIES[c][0] for c in category.tolist()]
    dirt = rng.random(n)
    for i in np.flatnonzero(dirt < _DIRTY_CATEGORIES).tolist():
        upper = dirt[i] < _DIRTY_CATEGORIES / 2
        categories[i] = categories[i].upper() if upper else f" {categories[i]} "
    table = pa.table(
        {
            "product_id": product_id,
            "sku": [f"SKU-{i:05d}" for i in product_id.tolist()],
            "product_name": names,
            "category": categories,
            "price": price,
        }
    )
    _write_csv(table, folder / "products.csv")
    return price


def _write_customers(folder: Path, n: int, rng: Any) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    customer_id = np.arange(1, n + 1)
    first = _pick(_FIRST_NAMES, rng.integers(0, len(_FIRST_NAMES), n))
    last = _pick(_LAST_NAMES, rng.integers(0, len(_LAST_NAMES), n))
    domain = _pick(_DOMAINS, rng.integers(0, len(_DOMAINS), n))
    address = _join(first, ".", last, _strings(customer_id), "@", domain)
    email = _masked(rng.random(n) < _MIXED_CASE_EMAILS, address, pc.utf8_lower(address))
    email = _masked(rng.random(n) < _PADDED_VALUES, _join(" ", email, " "), email)
    email = _masked(rng.random(n) < _NULL_EMAILS, pa.scalar(None, pa.string()), email)
    first = _masked(rng.random(n) < _PADDED_VALUES, _join(first, "  "), first)

    street, postal, city, country = _addresses(n, rng)
    signup = _epoch("2022-01-01T00:00:00") + rng.integers(0, 730 * _DAY, n)
    initial = pa.table(
        {
            "customer_id": customer_id,
            "first_name": first,
            "last_name": last,
            "email": email,
            "street": street,
            "postal_code": postal,
            "city": city,
            "country": country,
            "signup_date": pc.utf8_slice_codeunits(_timestamps(signup, iso=False), 0, 10),
            "updated_at": _timestamps(signup, iso=False),
        }
    )
    _write_csv(initial, folder / "customers_2024-01-01.csv")

    # A later delta file: the customers who moved, with their new address.
    moved = np.sort(rng.choice(n, max(1, round(n * _CUSTOMER_MOVES)), replace=False))
    m = moved.size
    new_street, new_postal, new_city, new_country = _addresses(m, rng)
    same_city = pa.array(rng.random(m) < 0.5)
    old = initial.take(pa.array(moved))
    moved_at = _epoch("2024-03-01T00:00:00") + rng.integers(0, 214 * _DAY, m)
    update = old.set_column(4, "street", new_street)
    update = update.set_column(
        5, "postal_code", pc.if_else(same_city, old["postal_code"], new_postal)
    )
    update = update.set_column(6, "city", pc.if_else(same_city, old["city"], new_city))
    update = update.set_column(7, "country", pc.if_else(same_city, old["country"], new_country))
    update = update.set_column(9, "updated_at", _timestamps(moved_at, iso=False))
    _write_csv(update, folder / "customers_2024-10-01.csv")
    return n + m


def _addresses(n: int, rng: Any) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    import numpy as np
    import pyarrow.compute as pc

    number = rng.integers(1, 200, n)
    street = _join(_strings(number), " ", _pick(_STREETS, rng.integers(0, len(_STREETS), n)))
    city_index = rng.integers(0, len(_CITIES), n)
    prefix = np.array([c[2] for c in _CITIES])[city_index]
    postal = pc.utf8_lpad(_strings(prefix * 1000 + rng.integers(0, 1000, n)), 5, "0")
    city = _pick(tuple(c[0] for c in _CITIES), city_index)
    country = _pick(tuple(c[1] for c in _CITIES), city_index)
    # Some systems send country codes in lower case.
    country = _masked(rng.random(n) < _PADDED_VALUES, pc.utf8_lower(country), country)
    return street, postal, city, country


@dataclass
class _Orders:
    """One row per order (its first version), as numpy arrays."""

    order_id: np.ndarray
    customer_id: np.ndarray
    order_ts: np.ndarray
    status: np.ndarray


def _order_headers(n: int, n_customers: int, rng: Any) -> _Orders:
    import numpy as np

    order_ts = _epoch(_YEAR_START) + np.sort(rng.integers(0, 366 * _DAY, n))
    # Some customers order much more often than others.
    weight = rng.lognormal(0.0, 0.75, n_customers)
    customer = rng.choice(n_customers, n, p=weight / weight.sum()) + 1
    status = rng.choice(len(_STATUSES), n, p=_STATUS_P)
    return _Orders(np.arange(100_001, 100_001 + n), customer, order_ts, status)


def _write_orders(folder: Path, orders: _Orders, rng: Any) -> int:
    import numpy as np

    n = orders.order_id.size
    channel = rng.choice(len(_CHANNELS), n, p=_CHANNEL_P)
    shipping = rng.choice(len(_SHIPPING), n, p=_SHIPPING_P)
    shipping[channel == _CHANNELS.index("store")] = 2  # bought in a store: picked up there
    coupon = rng.integers(0, len(_COUPONS), n)
    no_coupon = rng.random(n) < _ORDER_NULL_COUPONS
    coupon_key_missing = no_coupon & (rng.random(n) < 0.5)
    updated_at = orders.order_ts + rng.integers(0, 3600, n)

    # Late updates: an open order is shipped, delivered or cancelled days later.
    open_orders = np.flatnonzero(orders.status < 2)
    late = np.sort(
        rng.choice(
            open_orders, min(open_orders.size, round(n * _ORDER_LATE_UPDATES)), replace=False
        )
    )
    cancel = rng.random(late.size) < 0.3
    late_status = np.where(cancel, 3, orders.status[late] + 1)
    late_at = updated_at[late] + rng.integers(3600, 20 * _DAY, late.size)

    # Versions: every order once, then the late updates.
    version = np.concatenate([np.arange(n), late])
    v_status = np.concatenate([orders.status, late_status])
    v_updated = np.concatenate([updated_at, late_at])
    # Exact duplicates: the same record delivered again, up to two days later.
    dup = rng.choice(version.size, round(version.size * _ORDER_DUPLICATES), replace=False)
    record = np.concatenate([np.arange(version.size), dup])
    arrival = np.concatenate([v_updated, v_updated[dup] + rng.integers(0, 2 * _DAY, dup.size)])
    order = np.lexsort((np.arange(record.size), arrival))
    record, arrival = record[order], arrival[order]
    o = version[record]

    coupon_text = _pick(_COUPONS, coupon[o])
    coupon_field = _masked(
        no_coupon[o],
        _masked(coupon_key_missing[o], "", '"coupon":null,'),
        _join('"coupon":"', coupon_text, '",'),
    )
    ship_method = _pick(tuple(s[0] for s in _SHIPPING), shipping[o])
    ship_fee = _pick(tuple(s[1] for s in _SHIPPING), shipping[o])
    lines = _join(
        '{"order_id":',
        _strings(orders.order_id[o]),
        ',"customer_id":',
        _strings(orders.customer_id[o]),
        ',"order_ts":"',
        _timestamps(orders.order_ts[o], iso=True),
        '","status":"',
        _pick(_STATUSES, v_status[record]),
        '","channel":"',
        _pick(_CHANNELS, channel[o]),
        '",',
        coupon_field,
        '"shipping":{"method":"',
        ship_method,
        '","fee":',
        ship_fee,
        '},"updated_at":"',
        _timestamps(v_updated[record], iso=True),
        '"}\n',
    )
    _write_monthly(folder, "orders_{}.ndjson", arrival, lines)
    return int(record.size)


def _write_monthly(folder: Path, pattern: str, seconds: np.ndarray, lines: pa.Array) -> None:
    """Write pre-rendered lines (sorted by ``seconds``) into one file per month."""
    import numpy as np

    month = seconds.astype("datetime64[s]").astype("datetime64[M]")
    starts = np.flatnonzero(np.r_[True, month[1:] != month[:-1]])
    ends = np.r_[starts[1:], month.size]
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        name = pattern.format(np.datetime_as_string(month[start], unit="M"))
        text = "".join(lines.slice(start, end - start).to_pylist())
        (folder / name).write_text(text, encoding="utf-8")


def _write_order_lines(folder: Path, orders: _Orders, prices: np.ndarray, n: int, rng: Any) -> int:
    import numpy as np
    import pyarrow as pa

    n_orders = orders.order_id.size
    per_order = rng.integers(1, 6, n_orders)
    while (gap := n - int(per_order.sum())) != 0:
        if gap > 0:
            np.add.at(per_order, rng.integers(0, n_orders, gap), 1)
        else:
            several = np.flatnonzero(per_order > 1)
            per_order[rng.choice(several, min(-gap, several.size), replace=False)] -= 1
    order_index = np.repeat(np.arange(n_orders), per_order)
    first_line = np.repeat(np.cumsum(per_order) - per_order, per_order)
    line_no = np.arange(n) - first_line + 1
    # Popular products sell more (popularity does not follow the product id).
    popularity = rng.permutation(prices.size)
    product = popularity[(prices.size * rng.random(n) ** 2).astype(np.int64)]
    quantity = rng.choice([1, 2, 3, 4, 5, 6], n, p=[0.6, 0.25, 0.1, 0.03, 0.015, 0.005])
    discount = np.where(rng.random(n) < 0.1, 0.9, 1.0)
    unit_price = np.round(prices[product] * discount, 2)
    # Lines keyed in with quantity 0 (removed from the basket, sent anyway).
    quantity = np.where(rng.random(n) < _ZERO_QUANTITY_LINES, 0, quantity)

    dup = rng.choice(n, round(n * _LINE_DUPLICATES), replace=False)
    row = np.concatenate([np.arange(n), dup])
    position = np.concatenate([np.arange(n), dup + rng.integers(1, 40, dup.size)])
    month = orders.order_ts[order_index[row]].astype("datetime64[s]").astype("datetime64[M]")
    order = np.lexsort((np.arange(row.size), position, month))
    row = row[order]
    table = pa.table(
        {
            "order_id": orders.order_id[order_index[row]],
            "line_no": line_no[row],
            "product_id": product[row] + 1,
            "quantity": quantity[row],
            "unit_price": unit_price[row],
        }
    )
    month = month[order]
    starts = np.flatnonzero(np.r_[True, month[1:] != month[:-1]])
    ends = np.r_[starts[1:], month.size]
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        name = f"order_lines_{np.datetime_as_string(month[start], unit='M')}.csv"
        _write_csv(table.slice(start, end - start), folder / name)
    return int(row.size)
