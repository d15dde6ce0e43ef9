import Foundation
import ImageDecoding
import ShardFormat

/// The region of the source image that a view shows, in source pixels (recorded as `crop_box`).
///
/// Follows the resize arithmetic of each crop mode (ADM: floor box-halvings, round-half-even
/// bicubic sizes, floor offsets; resize-center: truncated long side, rounded offsets) and maps the
/// kept square back through the scale factors, rounding to the nearest pixel.
enum CropGeometry {
    static func sourceBox(width: Int, height: Int, resolution s: Int, crop: CropMode, view: View,
                          tenCropRange: Double = 1.1) -> CropBox {
        switch view {
        case .identity, .horizontalFlip:
            return box(width: width, height: height, side: s, crop: crop)
        case .tenCrop(let i):
            let big = Int(Double(s) * tenCropRange)
            let outer = box(width: width, height: height, side: big, crop: .adm)
            let k = Double(outer.width) / Double(big)
            let corner = i % 5
            let (ox, oy): (Int, Int)
            switch corner {
            case 0: (ox, oy) = (0, 0)
            case 1: (ox, oy) = (big - s, 0)
            case 2: (ox, oy) = (0, big - s)
            case 3: (ox, oy) = (big - s, big - s)
            default: (ox, oy) = (Int((Double(big - s) / 2).rounded()), Int((Double(big - s) / 2).rounded()))
            }
            // Views 5...9 come from the mirrored crop: mirror the x offset back.
            let x = i >= 5 ? big - s - ox : ox
            return CropBox(x: outer.x + Int((Double(x) * k).rounded()), y: outer.y + Int((Double(oy) * k).rounded()),
                           width: Int((Double(s) * k).rounded()), height: Int((Double(s) * k).rounded()))
        }
    }

    static func box(width: Int, height: Int, side s: Int, crop: CropMode) -> CropBox {
        var w = width, h = height
        let rw: Int, rh: Int, ox: Int, oy: Int
        switch crop {
        case .adm:
            while min(w, h) >= 2 * s {
                w /= 2
                h /= 2
            }
            let scale = Double(s) / Double(min(w, h))
            rw = Int((Double(w) * scale).rounded(.toNearestOrEven))
            rh = Int((Double(h) * scale).rounded(.toNearestOrEven))
            ox = (rw - s) / 2
            oy = (rh - s) / 2
        case .resizeCenter:
            if w <= h {
                rw = s
                rh = Int(Double(s) * Double(h) / Double(w))
            } else {
                rh = s
                rw = Int(Double(s) * Double(w) / Double(h))
            }
            ox = Int((Double(rw - s) / 2).rounded(.toNearestOrEven))
            oy = Int((Double(rh - s) / 2).rounded(.toNearestOrEven))
        }
        let kx = Double(width) / Double(rw), ky = Double(height) / Double(rh)
        return CropBox(x: Int((Double(ox) * kx).rounded()), y: Int((Double(oy) * ky).rounded()),
                       width: min(width, Int((Double(s) * kx).rounded())), height: min(height, Int((Double(s) * ky).rounded())))
    }
}
